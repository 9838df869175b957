"""The package's shape (ARCHITECTURE.md): sub-packages in layers that import only downwards, the
lower ones without Lightning, thin commands on top; and a built wheel that runs on its own."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bertpt

ROOT = Path(bertpt.__file__).resolve().parents[1]
PACKAGE = ROOT / "bertpt"
# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS = ("common", "data", "model", "runs", "training", "probing", "benchmarks")
COMMANDS = len(LAYERS)  # the top-level modules: what users run
NO_LIGHTNING = ("common", "data", "model", "runs")


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in LAYERS:
        return COMMANDS
    return LAYERS.index(parts[1])


def _imports(path: Path) -> list[str]:
    """The modules ``path`` imports, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "bertpt":  # `from bertpt import X`: X is a module or CONF_DIR
                found += [f"bertpt.{a.name}" for a in node.names if a.name != "CONF_DIR"]
            else:
                found.append(node.module)
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] != "__init__":
            out[".".join(parts)] = path
    return out


def test_every_module_sits_in_a_layer_and_imports_only_downwards():
    modules = _modules()
    sub_packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert sub_packages == set(LAYERS), "a new sub-package needs its place in LAYERS and the map"
    upward = [
        f"{name} imports {imported}"
        for name, path in modules.items()
        for imported in _imports(path)
        if imported.startswith("bertpt.") and _layer(imported) > _layer(name)
    ]
    assert not upward, upward


def test_the_lower_layers_run_without_lightning():
    heavy = [
        f"{name} imports {imported}"
        for name, path in _modules().items()
        if name.split(".")[1] in NO_LIGHTNING
        for imported in _imports(path)
        if imported.split(".")[0] in ("lightning", "pytorch_lightning")
    ]
    assert not heavy, heavy


def test_commands_are_thin_and_each_is_named_in_the_map():
    """A top-level module is a command: a docstring, one import of its home, the main guard
    (train.py, Hydra's entry point, also checks the command line first)."""
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    for name, path in _modules().items():
        if _layer(name) != COMMANDS:
            continue
        assert f"`{name}`" in architecture, f"{name} is missing from ARCHITECTURE.md"
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        assert len(lines) <= (60 if name == "bertpt.train" else 8), f"{name} is not thin"
    for name in _modules():
        if _layer(name) != COMMANDS:
            assert f"{name.split('.', 1)[1].replace('.', '/')}.py" in architecture, name


@pytest.mark.slow
def test_a_built_wheel_trains_from_an_empty_folder(tmp_path, data_dir):
    """pip install of the wheel, not the checkout: the configs ship inside it, and a run started
    in an empty folder trains, checkpoints and exports."""
    src = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            os.symlink(os.readlink(ROOT / rel), src / rel)
        else:
            shutil.copy2(ROOT / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("bertpt-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    assert (site / "bertpt" / "conf" / "experiment" / "tiny.yaml").is_file()

    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import bertpt; print(bertpt.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip() == str(site / "bertpt" / "__init__.py")
    run = work / "run"
    args = [
        "+experiment=tiny", "+debug=fast", "optim.max_steps=4", "data.global_batch_size=8",
        "logger=csv", "++callbacks.val_probe=null", f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bertpt.train", *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "hf" / "config.json").is_file()
