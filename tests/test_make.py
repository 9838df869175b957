"""The make targets the README promises, run for real: ``make data``, ``make tokenizer``, ``make
train`` (a 4-step tiny run through the same target, then the probe on its export), the install
stamp and ``make clean``.

make runs in a copy of the checkout made of links (the Makefile, bertpt, conf and .venv; its own
pyproject.toml, see ``checkout_copy``), so what a target writes lands in a temporary folder and
never in the source tree, and every target finds the .venv that ``make test`` installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from runs import ROOT

from bertpt.data.corpus import corpus_fingerprint
from bertpt.data.tokenizer import train_tokenizer

LINKED = ("Makefile", "bertpt", "conf", ".venv")
STAMP = ".venv/.installed"
# The Makefile's `?=` variables: set in the environment, they would change what a target does.
MAKE_VARIABLES = ("PYTHON", "VENV", "CORPUS", "TOKENIZER", "VOCAB_SIZE", "EXPERIMENT")
MAKE_VARIABLES += ("TRAIN_ARGS", "PROBE_ARGS", "PYTEST_ARGS", "TORCH_VERSION", "TORCH_CPU_INDEX")
# Under `make test` these carry the outer make's flags and level into ours.
MAKE_STATE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
RUN_NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")


def checkout_copy(dest: Path) -> Path:
    """A folder that make takes for this checkout: links to the Makefile, the package, the
    configs and the installed .venv, and a copy of pyproject.toml dated just before the install
    stamp, as a finished ``make install`` leaves them. (A link to the real pyproject.toml would
    make a checkout whose pyproject.toml was edited since its install reinstall the real .venv.)"""
    stamp = ROOT / STAMP
    assert stamp.is_file(), f"no {stamp}: these tests use the installed .venv — make install"
    dest.mkdir(parents=True)
    for name in LINKED:
        (dest / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    before = stamp.stat().st_mtime - 60
    os.utime(dest / "pyproject.toml", (before, before))
    return dest


def make(cwd: Path, *args: str, check: bool = True, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES + MAKE_STATE}
    env |= {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check:
        said = proc.stdout[-3000:] + proc.stderr[-5000:]
        assert proc.returncode == 0, f"make {' '.join(args)}:\n{said}"
    return proc


@pytest.fixture(scope="module")
def made_data(tmp_path_factory):
    """A checkout copy after ``make data``: (its folder, make's output)."""
    checkout = checkout_copy(tmp_path_factory.mktemp("make") / "checkout")
    return checkout, make(checkout, "data")


def test_make_data_builds_the_default_corpus_once(made_data, default_corpus):
    checkout, first = made_data
    corpus = checkout / "data" / "corpus.txt"
    assert ".venv/bin/python -m bertpt.corpus data/corpus.txt" in first.stdout, first.stdout
    # The offline default corpus, as bertpt.data.corpus builds it (deterministic).
    assert corpus.read_bytes() == default_corpus.read_bytes()
    built = corpus.stat().st_mtime_ns
    again = make(checkout, "data")
    assert again.stdout.strip() == "make: Nothing to be done for 'data'.", again.stdout
    assert corpus.stat().st_mtime_ns == built


def test_make_tokenizer_trains_wordpiece_on_the_corpus_into_data_tokenizer(made_data, tmp_path):
    checkout, _ = made_data
    proc = make(checkout, "tokenizer")
    # The corpus is there: only the tokenizer is trained, with the README's command.
    assert "bertpt.corpus" not in proc.stdout, proc.stdout
    command = ".venv/bin/python -m bertpt.tokenizer data/corpus.txt --out data/tokenizer"
    assert f"{command} --vocab-size 8192" in proc.stdout, proc.stdout
    folder = checkout / "data" / "tokenizer"
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (folder / name).is_file(), sorted(p.name for p in folder.iterdir())
    vocab = (folder / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 8192 and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    meta = json.loads((folder / "bertpt_tokenizer.json").read_text())
    assert meta["corpus"] == corpus_fingerprint(checkout / "data" / "corpus.txt")
    # What the library trains on that corpus with the defaults (uncased WordPiece), byte for byte.
    direct = train_tokenizer(
        checkout / "data" / "corpus.txt", tmp_path / "tok", vocab_size=8192, show_progress=False
    )
    assert (folder / "tokenizer.json").read_bytes() == (direct / "tokenizer.json").read_bytes()

    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pair = tokenizer("Return the value.", "Raise an error.")
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]", tokens
    second = tokens.index("[SEP]") + 1
    assert pair["token_type_ids"] == [0] * second + [1] * (len(tokens) - second), pair


def test_a_second_make_install_installs_nothing(tmp_path):
    """``.venv/.installed`` stamps the install: newer than pyproject.toml, ``make install`` runs
    nothing; pyproject.toml changed since, it would install again (``-n``: printed, not run)."""
    checkout = checkout_copy(tmp_path / "checkout")
    assert make(checkout, "-q", "install", check=False).returncode == 0  # up to date
    proc = make(checkout, "install")
    assert proc.stdout.strip() == "make: Nothing to be done for 'install'.", proc.stdout
    assert "pip" not in proc.stdout + proc.stderr

    later = (ROOT / STAMP).stat().st_mtime + 60
    os.utime(checkout / "pyproject.toml", (later, later))
    assert make(checkout, "-q", "install", check=False).returncode == 1  # out of date
    plan = make(checkout, "-n", "install").stdout
    assert '.venv/bin/python -m pip install -q -e ".[dev]"' in plan, plan
    assert "touch .venv/.installed" in plan, plan

    # No .venv at all (a fresh clone): the first call creates it, installs, then stamps.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "Makefile").symlink_to(ROOT / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", fresh / "pyproject.toml")
    plan = make(fresh, "-n", "install").stdout.splitlines()
    assert plan[0] == "python3 -m venv .venv" and plan[-1] == "touch .venv/.installed", plan
    assert any('pip install -q -e ".[dev]"' in line for line in plan), plan


# What `make clean` removes ("generated data, outputs and caches") and what it keeps.
GENERATED = [
    "data/corpus.txt", "data/tokenizer/vocab.txt", "data/tokenizers/x/tokenizer.json",
    "data/cache/store/data.arrow",
    "outputs/train/runs/2024-01-01_00-00-00/report.md", "multirun/2024-01-01/0/x",
    "wandb/offline-run-x/run.wandb", ".pytest_cache/v/cache/nodeids", ".ruff_cache/0.5/x",
    "bertpt/__pycache__/train.cpython-311.pyc", "tests/__pycache__/test_x.cpython-311.pyc",
]  # fmt: skip
KEPT = [
    "data/README.md", ".venv/.installed", ".venv/bin/python",
    ".venv/lib/python3.11/site-packages/torch/__pycache__/version.cpython-311.pyc",
    "bertpt/train.py", "tests/test_x.py", "README.md",
]  # fmt: skip


def test_make_clean_removes_what_was_generated_and_keeps_the_venv(tmp_path):
    """In a folder of real files (links would hide what find descends into): the package and
    .venv are plain folders here, each with a __pycache__."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "Makefile").symlink_to(ROOT / "Makefile")
    for name in GENERATED + KEPT:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(name)
    make(checkout, "clean")
    left = [name for name in GENERATED if (checkout / name).exists()]
    assert not left, f"make clean left {left}"
    for folder in ("data/tokenizer", "data/cache", "outputs", "multirun", "wandb", ".pytest_cache"):
        assert not (checkout / folder).exists(), folder
    assert not (checkout / "bertpt" / "__pycache__").exists()
    gone = [name for name in KEPT if not (checkout / name).is_file()]
    assert not gone, f"make clean removed {gone}"


def small_task(path: Path) -> Path:
    """A two-class csv task that a probe fits in seconds (the built-in task takes a minute even
    on 128 examples: its docstrings are parsed from the standard library)."""
    good, bad = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    rows = [f"film {i} was {(good if i % 2 else bad)[i % 4]},{i % 2}" for i in range(60)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_make_train_trains_exports_and_probes_the_run_it_made(tmp_path):
    """``make train`` from a fresh checkout (installed): builds the corpus and the tokenizer,
    trains, exports, and probes that export, the run named once per make call. A 4-step tiny run
    (``EXPERIMENT``, ``TRAIN_ARGS``) and a cheap probe (``PROBE_ARGS``: the frozen-feature probe
    on a small task; the defaults take minutes)."""
    checkout = checkout_copy(tmp_path / "checkout")
    task = small_task(tmp_path / "task.csv")
    probe_args = f"--task {task} --mode linear --no-baseline"
    args = ["EXPERIMENT=tiny", "TRAIN_ARGS=+debug=fast logger=csv", f"PROBE_ARGS={probe_args}"]
    planned = make(checkout, "-n", "train", *args).stdout
    probe_line = next(line for line in planned.splitlines() if "-m bertpt.probe" in line)
    assert probe_line.endswith(probe_args), f"the probe gets no PROBE_ARGS: {probe_line}"

    out = make(checkout, "train", *args, timeout=1200).stdout
    runs = list((checkout / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and RUN_NAME.fullmatch(runs[0].name), runs
    run = runs[0]
    rel = f"outputs/train/runs/{run.name}"
    command = f".venv/bin/python -m bertpt.train +experiment=tiny hydra.run.dir={rel} +debug=fast"
    assert command in out, out[:3000]
    # The offline corpus and the run's tokenizer, built in the checkout's data/.
    assert (checkout / "data" / "corpus.txt").stat().st_size > 1_000_000
    assert len(list((checkout / "data" / "tokenizers").glob("*/tokenizer.json"))) == 1
    assert "bertpt: done. tiny: 4 steps" in out, out[-3000:]
    written = ["checkpoints/last.ckpt", "hf/config.json", "hf/model.safetensors"]
    written += ["hf/tokenizer.json", "plots/overview.png", "report.md", "csv/metrics.csv"]
    missing = [name for name in written if not (run / name).is_file()]
    assert not missing, f"make train's run has no {missing}"

    # The probe ran on this run's export, with PROBE_ARGS.
    assert f".venv/bin/python -m bertpt.probe {rel}/hf {probe_args}" in out
    assert re.search(rf"^probe {task}: {rel}/hf on \d+ examples$", out, re.M), out[-3000:]
    assert re.search(rf"^model {rel}/hf \(1\.6 M parameters\)", out, re.M), out[-3000:]
    assert re.search(r"^  linear +pretrained +[\d.]+% +\(deterministic\)$", out, re.M), out[-2000:]
    assert re.search(r"^  words +TF-IDF +[\d.]+%", out, re.M) and "random init" not in out
    last = out.strip().splitlines()[-1]
    said = f"plots: {rel}/plots/overview.png (and one file per panel); report: {rel}/report.md"
    assert last == said, last
