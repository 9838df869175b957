"""Shared fixtures: the real default corpus and a small tokenizer trained on it, built once."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No native bf16 for the suite's runs, whatever the CPU: trainer.precision=auto then means
# 32-true on every machine, so a test's figures do not depend on which kind of CPU runs it.
# oneDNN (and bertpt.training.precision) honour this limit; test_precision.py stands in for a CPU
# with native bf16 where it tests auto itself.
os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE"


@pytest.fixture(scope="session")
def default_corpus(tmp_path_factory):
    """The offline default corpus (stdlib docstrings, BERT format), about 1.6 MB."""
    from bertpt.data.corpus import build_default_corpus

    return build_default_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tokenizer_dir(default_corpus, tmp_path_factory):
    """An uncased 2,000-token WordPiece tokenizer trained on the default corpus."""
    from bertpt.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return train_tokenizer(default_corpus, out, vocab_size=2000, show_progress=False)


@pytest.fixture(scope="session")
def data_dir(default_corpus, tmp_path_factory):
    """A data folder shared by the runs: the default corpus; tokenizer and store are cached."""
    d = tmp_path_factory.mktemp("data")
    shutil.copy(default_corpus, d / "corpus.txt")
    return d


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(default_corpus, tmp_path_factory):
    """A 1,000-token byte-level BPE (RoBERTa) tokenizer trained on the default corpus."""
    from bertpt.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("bpe") / "tokenizer"
    return train_tokenizer(
        default_corpus, out, vocab_size=1000, lowercase=False, kind="bpe", show_progress=False
    )


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory):
    """A real tiny run of 40 steps by the real command, val/probe_acc on, whose end wrote its
    plots, report.md and Hugging Face export: (run folder, console output). Shared by the plot,
    report, probe and README tests."""
    from runs import run_cli

    tmp = tmp_path_factory.mktemp("finished")
    run = tmp / "run"
    args = [
        "+experiment=tiny", "optim.max_steps=40", "optim.warmup_steps=1",
        "data.global_batch_size=16", "data.val_max_pairs=16", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=10", "callbacks.model_checkpoint.every_n_train_steps=40",
        "callbacks.val_probe.max_train_examples=256",  # val/probe_acc on, at a quarter the cost
        "logger=csv", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = run_cli(args, cwd=tmp)
    return run, proc.stdout


@pytest.fixture(scope="session")
def real_sweep(data_dir, tmp_path_factory):
    """A real sweep by the real command, four tiny jobs of 4 steps in one process: two learning
    rates, each logged to W&B and CSV (logger=wandb_csv) and to W&B alone (logger=wandb), run
    with this checkout's bertpt and conf/ whatever copy is installed: (sweep folder, console
    output). Its jobs are runs.SWEEP_JOBS. Shared by the sweep-summary and plot tests."""
    from runs import ROOT, SWEEP_ARGS, SWEEP_JOBS, run_cli

    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "sweep"
    loggers = ",".join(dict.fromkeys(logger for logger, _ in SWEEP_JOBS))
    lrs = ",".join(dict.fromkeys(str(lr) for _, lr in SWEEP_JOBS))
    args = ["-m", *SWEEP_ARGS, f"logger={loggers}", f"optim.lr={lrs}"]
    args += [f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, cwd=tmp, env_extra={"PYTHONPATH": str(ROOT)})
    return sweep, proc.stdout
