"""Helpers for tests that run bertpt for real: compose a config, run the CLI, read metrics."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
# What every test sweep's jobs share: tiny, a few steps, no export.
SWEEP_ARGS = ["+experiment=tiny", "+debug=fast", "export_hf=false"]
# The jobs of conftest.real_sweep, in Hydra's order: (logger, optim.lr).
SWEEP_JOBS = [("wandb_csv", 1e-4), ("wandb_csv", 3e-4), ("wandb", 1e-4), ("wandb", 3e-4)]


def make_cfg(run_dir: Path, data_dir: Path, *overrides: str) -> DictConfig:
    """The config `python -m bertpt.train` would compose, for a run in ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                f"paths.root_dir={run_dir}",
                f"paths.data_dir={data_dir}",
                f"hydra.run.dir={run_dir}",
                "trainer.enable_model_summary=false",
                *without_val_probe(overrides),
            ],
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def without_val_probe(overrides) -> list[str]:
    """``overrides`` and, unless they name it, the validation probe off: it costs seconds per
    validation, and its own tests (test_probe_callback.py) turn it on."""
    overrides = list(overrides)
    if any("val_probe" in o or o.startswith("callbacks=") for o in overrides):
        return overrides
    return [*overrides, "++callbacks.val_probe=null"]


def run_cli(
    args: list[str],
    cwd: Path,
    env_extra: dict | None = None,
    timeout: int = 600,
    module: str = "bertpt.train",
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python -m bertpt.train ARGS`` in ``cwd``; asserts exit 0 unless ``check=False``."""
    env_extra = dict(env_extra or {})
    # This checkout's bertpt (whichever one is installed) and the test-only callbacks first.
    paths = [env_extra.pop("PYTHONPATH", ""), str(ROOT), str(ROOT / "tests")]
    paths.append(os.environ.get("PYTHONPATH", ""))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **env_extra,
    }
    if module == "bertpt.train":
        args = without_val_probe(args)
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {
        int(r["step"]): float(r["train/loss"]) for r in read_metrics(run_dir) if r["train/loss"]
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_without_recompiling(model, batches, autocast: str | None = None) -> None:
    """Training steps (forward, backward) of a model whose layers are compiled, over batches of
    other shapes: any recompilation after the first batch fails."""
    import contextlib

    import torch

    torch._dynamo.reset()
    try:
        for i, batch in enumerate(batches):
            precision = (
                torch.autocast(autocast, dtype=torch.bfloat16)
                if autocast
                else contextlib.nullcontext()
            )
            with precision:
                model(**batch).loss.backward()
            if i == 0:
                torch.compiler.set_stance("fail_on_recompile")
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()


def readme_python_examples() -> list[tuple[int, str]]:
    """(first line, source) of each fenced ``python`` block of the README."""
    blocks: list[tuple[int, list[str]]] = []
    inside = False
    for n, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            inside = not inside and line[3:].strip() == "python"
        elif inside and blocks and n == blocks[-1][0] + len(blocks[-1][1]):
            blocks[-1][1].append(line)
        elif inside:
            blocks.append((n, [line]))
    return [(n, "\n".join(block)) for n, block in blocks]


def run_readme_example(marker: str, paths: dict[str, str]) -> dict:
    """Run the README's python block that contains ``marker``, its placeholder paths replaced
    (``paths``: README text -> real path; each must occur), and return its variables; the value
    of a last bare expression (``fill("...")``) is ``_``."""
    found = [(n, s) for n, s in readme_python_examples() if marker in s]
    assert len(found) == 1, f"README.md has {len(found)} python blocks with {marker!r}"
    line, source = found[0]
    for placeholder, real in paths.items():
        literal = f'"{placeholder}"'
        assert literal in source, f"README.md:{line}: the example has no {literal}"
        source = source.replace(literal, repr(str(real)))
    tree = ast.parse(source)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.Assign(targets=[ast.Name("_", ast.Store())], value=last.value)
        ast.fix_missing_locations(tree)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(tree, f"README.md:{line}", "exec"), namespace)
    return namespace


def other_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of the tokenizer folder ``src`` at ``dst``: the same size, other tokens (two
    entries of the vocabulary swapped)."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    lines = (dst / "vocab.txt").read_text().splitlines()
    lines[100], lines[101] = lines[101], lines[100]
    (dst / "vocab.txt").write_text("\n".join(lines) + "\n")
    return dst
