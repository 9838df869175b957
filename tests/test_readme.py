"""The README cannot drift: what it tells a user to type must exist and compose.

Checked: (a) every ``python -m bertpt.X`` names a runnable module and only flags it defines;
(b) every ``python -m bertpt.train ...`` line composes (Hydra's compose API in-process for all of
them, the real command with ``--cfg job`` for two); (c) every ``make TARGET`` is a target that
``make help`` lists; (d) the repository paths and pip extras it names exist; (e) every config
group option it names (``+experiment=NAME``, ``trainer=NAME``, ``logger=NAME``, ...) is a file in
``conf/``, and the experiments table matches ``conf/experiment``; (f) the Python example's
``bertpt`` imports and calls bind; (g) it names the folder a run trains its tokenizer into;
(h) the config keys and metric names it gives exist.

Each failure names the README line. Commands come from fenced ``bash`` blocks and from inline code
spans that start with ``python -m bertpt.``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import inspect
import os
import re
import shlex
import string
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from runs import ROOT, run_readme_example

README = ROOT / "README.md"
LINES = README.read_text().splitlines()
CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())

# Shell variables in the README's commands and the values a real launch would give them (the
# sbatch script's under 2 nodes x 8 tasks, torchrun's on node 0). A new variable fails the test
# until it is added here. Placeholders such as /path/to/corpus.txt, DATE_TIME or DIR stay as
# they are: composing a config (and --cfg job) never opens a path.
SHELL_VARS = {
    "NODE_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NTASKS_PER_NODE": "8",
    "SLURM_JOB_ID": "4242",
    "SLURM_SUBMIT_DIR": ".",
}


# --- reading the README ------------------------------------------------------------------------


def fenced_lines(lang: str) -> list[tuple[int, str]]:
    """(line number, text) of the lines inside ``lang`` fenced blocks."""
    out, inside = [], False
    for n, line in enumerate(LINES, 1):
        if line.startswith("```"):
            inside = not inside and line[3:].strip() == lang
        elif inside:
            out.append((n, line))
    return out


def bash_commands() -> list[tuple[int, str]]:
    """Logical command lines of the bash blocks (backslash continuations joined)."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, line in fenced_lines("bash"):
        start, text = pending or (n, "")
        if line.rstrip().endswith("\\"):
            pending = (start, text + line.rstrip()[:-1] + " ")
            continue
        pending = None
        out.append((start, text + line))
    return out


def inline_commands() -> list[tuple[int, str]]:
    return [
        (n, span)
        for n, line in enumerate(LINES, 1)
        for span in re.findall(r"`([^`]+)`", line)
        if span.startswith("python -m bertpt.")
    ]


def split(line: str) -> list[str]:
    return shlex.split(string.Template(line).safe_substitute(SHELL_VARS), comments=True)


def module_calls() -> list[tuple[int, str, list[str]]]:
    """(line, module, arguments) of every ``-m bertpt.X`` (python, torchrun or srun)."""
    calls = []
    for n, line in bash_commands() + inline_commands():
        tokens = split(line)
        for i, tok in enumerate(tokens[:-1]):
            if tok == "-m" and tokens[i + 1].startswith("bertpt."):
                calls.append((n, tokens[i + 1].removeprefix("bertpt."), tokens[i + 2 :]))
    return calls


def train_calls() -> list[tuple[int, list[str]]]:
    return [(n, args) for n, module, args in module_calls() if module == "train"]


def ids(cases: list[tuple]) -> list[str]:
    return [f"README.md:{case[0]}" for case in cases]


# --- (a) modules and their flags ---------------------------------------------------------------


class _Parsed(Exception):
    """Carries the parser a command built, out of its ``main``."""


def command_parser(module: str) -> argparse.ArgumentParser:
    """The argparse parser ``python -m bertpt.<module>`` builds: its ``main`` runs until it
    parses, which hands the parser over instead."""

    def hand_over(parser, *args, **kwargs):
        raise _Parsed(parser)

    command = importlib.import_module(f"bertpt.{module}")
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", hand_over),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", hand_over),
        pytest.raises(_Parsed) as parsed,
    ):
        command.main([])
    return parsed.value.args[0]


@pytest.mark.parametrize("line, module, args", module_calls(), ids=ids(module_calls()))
def test_module_exists_and_defines_its_flags(line, module, args):
    path = ROOT / "bertpt" / f"{module}.py"
    assert path.is_file(), f"README.md:{line}: python -m bertpt.{module}: no {path.name}"
    assert "__main__" in path.read_text(), f"README.md:{line}: bertpt/{module}.py has no __main__"
    if module == "train":
        return  # Hydra's command line: its overrides are checked by composing them
    flags = {a.split("=")[0] for a in args if a.startswith("--")}
    known = set(command_parser(module)._option_string_actions)  # every flag and its aliases
    missing = sorted(flags - known)
    assert not missing, f"README.md:{line}: python -m bertpt.{module} has no {missing}"


# --- (b) train commands compose ----------------------------------------------------------------


def jobs_of(args: list[str]) -> list[list[str]]:
    """The override lists of the jobs a command runs: one, or one per value of a ``-m`` sweep,
    expanded as Hydra's basic sweeper does (``optim.lr=1e-4,3e-4`` -> two jobs)."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_train(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("line, args", train_calls(), ids=ids(train_calls()))
def test_train_command_composes(line, args):
    unset = [a for a in args if "$" in a]
    assert not unset, f"README.md:{line}: add the shell variables of {unset} to SHELL_VARS"
    for job in jobs_of(args):
        try:
            compose_train(job)
        except Exception as e:
            pytest.fail(f"README.md:{line}: python -m bertpt.train {' '.join(job)}: {e}")


@pytest.fixture(scope="module")
def real_paths(tmp_path_factory, default_corpus) -> dict[str, str]:
    """The README's placeholder paths, each made real in the shape its command expects."""
    import datasets
    from transformers import RobertaConfig

    d = tmp_path_factory.mktemp("readme_paths")
    docs = default_corpus.read_text().split("\n\n")[:20]
    (d / "folder").mkdir()
    for i, doc in enumerate(docs):
        (d / "folder" / f"{i}.txt").write_text(doc)
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(d / "saved"))
    RobertaConfig().save_pretrained(d / "roberta-base")  # what snapshot_download leaves
    return {
        "/path/to/corpus.txt": str(default_corpus),
        "/path/to/folder_of_txt": str(d / "folder"),
        "/path/to/saved_dataset": str(d / "saved"),
        "model.init_from=roberta-base": f"model.init_from={d / 'roberta-base'}",
    }


@pytest.mark.parametrize("line, args", train_calls(), ids=ids(train_calls()))
def test_train_command_passes_the_config_check(line, args, real_paths, data_dir, tmp_path):
    """Each job of each README train command passes the check a run makes before it starts
    (overrides, then the composed config), its placeholder paths made real."""
    from bertpt.common.errors import UserError
    from bertpt.training.config_check import check_config, check_overrides

    for job in jobs_of(args):
        real = []
        for arg in job:
            for placeholder, path in real_paths.items():
                arg = arg.replace(placeholder, path)
            real.append(arg)
        try:
            check_overrides(real)
            cfg = compose_train([*real, f"paths.data_dir={data_dir}"])
            check_config(cfg, tmp_path / "run")
        except UserError as e:
            pytest.fail(f"README.md:{line}: python -m bertpt.train {' '.join(job)}: {e}")


def cli_cases() -> list[tuple[int, list[str]]]:
    """The first plain train command and the first sweep, the sweep as its first job: Hydra
    refuses ``--cfg`` together with ``-m``."""
    calls = train_calls()
    plain = next(c for c in calls if "-m" not in c[1])
    sweep = next(c for c in calls if "-m" in c[1])
    return [plain, (sweep[0], jobs_of(sweep[1])[0])]


def test_train_commands_compose_on_the_real_command_line(tmp_path):
    """``python -m bertpt.train ... --cfg job`` (~10 s each: it imports torch), two at once."""

    def run(case: tuple[int, list[str]]) -> tuple[int, subprocess.CompletedProcess]:
        line, args = case
        cmd = [sys.executable, "-m", "bertpt.train", *args, "--cfg", "job"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's bertpt, not an install
        return line, subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, cli_cases()))
    for line, proc in results:
        assert proc.returncode == 0, f"README.md:{line}: {proc.stderr[-2000:]}"
        assert "model:" in proc.stdout and "optim:" in proc.stdout


# --- (c) make targets --------------------------------------------------------------------------


def make_help_targets() -> set[str]:
    # --no-print-directory: under `make test` this is a sub-make, which would print
    # "make[1]: Entering directory ..." lines among the targets.
    out = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def named_targets() -> list[tuple[int, str]]:
    """``make X`` anywhere, and those in "`make help` lists every target (...)"."""
    found = []
    for n, line in enumerate(LINES, 1):
        found += [(n, t) for t in re.findall(r"\bmake ([a-z][\w-]*)", line)]
    text = "\n".join(LINES)
    listed = re.search(r"lists every target \(([^)]*)\)", text)
    if listed:
        n = text[: listed.start()].count("\n") + 1
        found += [(n, t) for t in re.findall(r"`([\w-]+)`", listed.group(1))]
    return found


def test_make_targets_exist():
    targets = make_help_targets()
    missing = [f"README.md:{n}: make {t}" for n, t in named_targets() if t not in targets]
    assert not missing, f"not targets of `make help` ({sorted(targets)}): {missing}"


def test_every_make_target_is_in_the_readme():
    """The README says `make help` lists every target, and names them: a new one joins the list."""
    unnamed = sorted(make_help_targets() - {t for _, t in named_targets()})
    assert not unnamed, f"targets of `make help` the README never names: {unnamed}"


# --- (d) repository paths and pip extras -------------------------------------------------------

REPO_PATH = re.compile(r"(?<![\w./-])((?:conf|bertpt|tests)/[\w./-]*|data/README\.md)")


def test_repository_paths_exist():
    missing = [
        f"README.md:{n}: {p}"
        for n, line in enumerate(LINES, 1)
        for p in (m.rstrip(".") for m in REPO_PATH.findall(line))
        if not (ROOT / p).exists()
    ]
    assert not missing, missing


def test_pip_extras_exist():
    # tomllib is Python 3.11+ and bertpt supports 3.10: the section's ``name = [`` lines.
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.M))
    named = [(n, e) for n, line in enumerate(LINES, 1) for e in re.findall(r"\.\[(\w+)\]", line)]
    missing = [f"README.md:{n}: .[{e}]" for n, e in named if e not in extras]
    assert not missing, f"extras in pyproject.toml: {sorted(extras)}; missing: {missing}"


# --- (e) config group options and the experiments table ----------------------------------------

OPTION = re.compile(rf"(?<![\w.])\+{{0,2}}({'|'.join(GROUPS)})=([\w,-]+)")


def test_group_options_exist():
    named = [
        (n, group, name)
        for n, line in enumerate(LINES, 1)
        for group, names in OPTION.findall(line)
        for name in names.split(",")
        if not name.isupper()  # a placeholder: +experiment=NAME
    ]
    assert named
    missing = [
        f"README.md:{n}: {g}={name}"
        for n, g, name in named
        if not (CONF / g / f"{name}.yaml").is_file()
    ]
    assert not missing, missing


CONFIG_KEY = re.compile(rf"(?<![\w/.$-])((?:{'|'.join(GROUPS)})\.[A-Za-z_][\w.]*[A-Za-z_])")
FILE_NAME = re.compile(r"\.(json|safetensors|txt|yaml|py|ckpt|md)$")


def test_config_keys_exist():
    """Every ``group.key`` the README names (``data.format``, ``trainer.fused_optimizer``, ...) is
    a key of the default config or of make train's (``callbacks.val_probe``); file names such as
    ``model.safetensors`` are not keys, and console transcripts (``text`` blocks) show mistakes on
    purpose."""
    configs = compose_train([]), compose_train(["+experiment=mini"])
    transcripts = {n for n, _ in fenced_lines("text")}
    named = [
        (n, key)
        for n, line in enumerate(LINES, 1)
        for key in CONFIG_KEY.findall(line)
        if not FILE_NAME.search(key) and n not in transcripts
    ]
    assert named
    missing = [
        f"README.md:{n}: {k}"
        for n, k in named
        if all(OmegaConf.select(cfg, k, default=KeyError) is KeyError for cfg in configs)
    ]
    assert not missing, missing


def test_metric_names_are_logged(finished_run):
    """Each metric the README names in backticks (``val/mlm_loss``) is one a real run logged (the
    shared 40-step tiny run's metrics.csv, validation probe on)."""
    run, _ = finished_run
    with open(run / "csv" / "metrics.csv") as f:
        logged = set(next(csv.reader(f)))
    named = [
        (n, m)
        for n, line in enumerate(LINES, 1)
        for m in re.findall(r"`((?:train|val)/\w+)`", line)
    ]
    assert named
    missing = [f"README.md:{n}: {m}" for n, m in named if m not in logged]
    assert not missing, f"{missing}; the run logged {sorted(logged)}"


def experiments_table() -> dict[str, str]:
    """``name: "L x H"`` of the rows of the table whose header starts with ``| experiment |``."""
    start = next(i for i, line in enumerate(LINES) if line.startswith("| experiment |"))
    rows = {}
    for line in LINES[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def test_experiments_table_matches_conf():
    table = experiments_table()
    assert set(table) == {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    for name, size in table.items():
        model = compose_train([f"+experiment={name}"]).model
        assert size == f"{model.num_hidden_layers} x {model.hidden_size}", name


# --- (f) the Python example ----------------------------------------------------------------------


def python_blocks() -> list[tuple[int, str]]:
    """(first line, source) of each ``python`` block."""
    lines = fenced_lines("python")
    blocks: list[tuple[int, list[str]]] = []
    for n, line in lines:
        if blocks and n == blocks[-1][0] + len(blocks[-1][1]):
            blocks[-1][1].append(line)
        else:
            blocks.append((n, [line]))
    return [(n, "\n".join(block)) for n, block in blocks]


def bertpt_imports(tree: ast.Module) -> dict[str, object]:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bertpt"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def call_target(func: ast.expr, names: dict, instances: dict) -> tuple[Any, list] | None:
    """The bertpt callable a call reaches, and what it binds before the call's own arguments:
    ``Name(...)``, ``Name.method(...)``, or ``var.method(...)`` on an instance of a bertpt class
    (the method then takes ``self`` too)."""
    if isinstance(func, ast.Name) and func.id in names:
        return names[func.id], []
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        owner, before = names.get(func.value.id), []
        if owner is None and func.value.id in instances:
            owner, before = instances[func.value.id], [None]
        if owner is not None:
            assert hasattr(owner, func.attr), f"{owner.__name__} has no {func.attr}"
            return getattr(owner, func.attr), before
    return None


def bertpt_instances(tree: ast.Module, names: dict) -> dict[str, type]:
    """Variables bound to ``Class(...)`` or ``Class.classmethod(...)`` of an imported class."""
    instances = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            found = call_target(node.value.func, names, {})
            target = found[0] if found else None
            cls = target if inspect.isclass(target) else getattr(target, "__self__", None)
            if inspect.isclass(cls):
                instances.update({t.id: cls for t in node.targets if isinstance(t, ast.Name)})
    return instances


def check_calls(tree: ast.Module, names: dict) -> int:
    """Bind every call on bertpt objects to its signature; returns how many were checked."""
    instances, checked = bertpt_instances(tree, names), 0
    for node in ast.walk(tree):
        found = call_target(node.func, names, instances) if isinstance(node, ast.Call) else None
        if found:
            target, before = found
            keywords = {k.arg: None for k in node.keywords if k.arg}
            inspect.signature(target).bind(*before, *node.args, **keywords)
            checked += 1
    return checked


@pytest.mark.parametrize("line, source", python_blocks(), ids=ids(python_blocks()))
def test_python_example_imports_and_calls_bind(line, source):
    tree = ast.parse(source)
    try:
        names = bertpt_imports(tree)
        if names:
            assert check_calls(tree, names) > 0
    except (AssertionError, TypeError) as e:
        pytest.fail(f"README.md:{line}: {e}")


# Each python example runs for real somewhere, its placeholder paths pointed at real ones: the
# marker that finds it -> the test that runs it.
EXAMPLES_RUN = {
    "NSPPairDataset.from_files": "test_readme.py::test_the_data_pipeline_example_runs",
    "BertForPreTraining.from_pretrained": "test_readme.py::test_the_export_example_loads",
    'pipeline("fill-mask"': (
        "test_roberta.py::test_roberta_tiny_trains_mlm_only_and_exports_for_fill_mask"
    ),
}


@pytest.mark.parametrize("line, source", python_blocks(), ids=ids(python_blocks()))
def test_every_python_example_is_run_by_a_test(line, source):
    runners = [test for marker, test in EXAMPLES_RUN.items() if marker in source]
    assert len(runners) == 1, f"README.md:{line}: no test runs this example; add it to EXAMPLES_RUN"
    file, name = runners[0].split("::")
    body = re.search(rf"^def {name}\(.*?(?=^\S)", (ROOT / "tests" / file).read_text(), re.M | re.S)
    assert body and "run_readme_example(" in body.group(0), f"{runners[0]} does not run it"


def test_the_data_pipeline_example_runs(default_corpus, tokenizer_dir, tmp_path, monkeypatch):
    """Three epochs of the README's loop over the default corpus, two workers: the batches hold
    the fields its comment names."""
    monkeypatch.setenv("BERTPT_CACHE", str(tmp_path / "cache"))  # not the user's ~/.cache
    seen = run_readme_example(
        "NSPPairDataset.from_files",
        {"data/corpus.txt": default_corpus, "data/tokenizer": tokenizer_dir},
    )
    batch, line = seen["batch"], next(n for n, s in python_blocks() if "from_files" in s)
    named = re.search(r"\.\.\.\s+# (.*)", next(s for n, s in python_blocks() if n == line))
    fields = {f.split(" ")[0] for f in named.group(1).split(", ")}
    assert set(batch) == fields, f"README.md:{line}: batches hold {sorted(batch)}"
    assert seen["epoch"] == 2 and batch["input_ids"].shape[1] <= 128
    assert (batch["labels"] != -100).any() and set(batch["next_sentence_label"].tolist()) <= {0, 1}


def test_the_export_example_loads(finished_run):
    """The README's transformers lines on a real export: the model and tokenizer load, and the
    tokenizer's [MASK] is the one the model was trained with."""
    run, _ = finished_run
    seen = run_readme_example("BertForPreTraining.from_pretrained", {"hf_model": run / "hf"})
    model, tokenizer = seen["model"], seen["tokenizer"]
    assert type(model).__name__ == "BertForPreTraining"
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("Return the [MASK] of the object.", return_tensors="pt")
    assert tokenizer.mask_token_id in ids["input_ids"][0].tolist()
    assert model(**ids).prediction_logits.shape[-1] == len(tokenizer)


# --- (g) where a run's tokenizer goes ----------------------------------------------------------


def test_readme_says_where_a_run_trains_its_tokenizer(tmp_path):
    """After ``make train`` a user looks for the tokenizer the run trained: the README must name
    the folder a run really writes it to (asked of the DataModule, for a default config)."""
    from bertpt.training.datamodule import PretrainDataModule

    (tmp_path / "corpus.txt").write_text("One sentence.\nAnother one.\n\nA second document.\n")
    cfg = OmegaConf.to_container(compose_train([f"paths.data_dir={tmp_path}"]), resolve=False)
    dm = PretrainDataModule(
        data=cfg["data"], tokenizer=cfg["tokenizer"], paths={"data_dir": str(tmp_path)}, seed=0
    )
    folder = f"data/{dm.tokenizer_dir.parent.relative_to(tmp_path).as_posix()}/"
    readers = [
        n for n, line in enumerate(LINES, 1) if re.search(r"(?<!--out )data/tokenizer\b(?!s)", line)
    ]
    if folder not in "\n".join(LINES):
        pytest.fail(
            f"a run writes its tokenizer to {folder}{dm.tokenizer_dir.name}/, which README.md "
            f"never names; README.md lines {readers} read data/tokenizer, which only "
            "`make tokenizer` or `python -m bertpt.tokenizer ... --out data/tokenizer` writes, "
            "not `make train`"
        )


def test_make_train_runs_the_command_the_readme_names():
    """`make train`'s training command is the one the README says, and it composes to the run the
    README measured: tiny at 5,000 steps with a 500-step warmup, at the peak lr and masking rate
    the README names."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "train", "TRAIN_RUN=RUN"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if "-m bertpt.train " in x)
    args = line.split("-m bertpt.train ", 1)[1].split()
    said = re.search(r"`make train` runs `python -m bertpt.train ([^`]*)`", "\n".join(LINES))
    assert said, "the README no longer says which command make train runs"
    assert [a for a in args if not a.startswith("hydra.")] == said.group(1).split(), line
    cfg = compose_train(args)
    assert (cfg.model.num_hidden_layers, cfg.model.hidden_size) == (2, 128)
    assert (cfg.optim.max_steps, cfg.optim.warmup_steps) == (5000, 500)
    lr = f"{cfg.optim.lr:.0e}".replace("e-0", "e-")  # 2e-3, as the README writes it
    recipe = f"at a peak lr of {lr} with {cfg.data.mlm_probability:.0%} of the tokens"
    assert recipe in " ".join(LINES), f"the README does not say make train trains {recipe} masked"
