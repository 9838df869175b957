"""Sweep summaries: a real multirun (a job per learning rate and logger, W&B-only jobs among
them) ends with summary.csv and a table; hand-made job folders cover what a real sweep makes
rarely (a crash mid-run, a job killed before its end was recorded)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
from runs import ROOT, SWEEP_ARGS, SWEEP_JOBS, read_metrics, run_cli

from bertpt.runs.sweeps import NO_RECORD, STATUS_FILE, SweepSummary, main, summarise

# This checkout's bertpt and conf/ in the sweep's process, whatever copy is installed.
THIS_CHECKOUT = {"PYTHONPATH": str(ROOT)}
LOGGERS = {"wandb_csv": ["wandb", "csv"], "wandb": ["wandb"]}


def read_summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def last_logged(run_dir: Path, name: str) -> str:
    return [r[name] for r in read_metrics(run_dir) if r[name]][-1]


def wandb_ids(run_dir: Path) -> list[str]:
    # offline-run-<date>_<time>-<id>: one folder per process that logged
    return [p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")]


@pytest.mark.slow
def test_real_sweep_writes_summary_and_prints_table(real_sweep):
    sweep, out = real_sweep
    rows = read_summary(sweep)
    assert [(r["logger"], float(r["optim.lr"])) for r in rows] == SWEEP_JOBS
    assert [r["status"] for r in rows] == ["ok", "ok", "no metrics", "no metrics"]
    for row in rows:
        job = sweep / row["job"]
        assert Path(row["folder"]) == job.resolve()
        for name in ("val/mlm_loss", "val/mlm_acc", "val/nsp_acc"):
            logged = last_logged(job, name) if row["logger"] == "wandb_csv" else ""
            assert row[f"final {name}"] == logged, (row["job"], name)
    # The W&B-only jobs logged to W&B alone, and the summary says so.
    assert [r["note"] for r in rows[2:]] == ["metrics only in W&B: no CSV"] * 2
    # Only the swept keys are columns: the overrides every job shares are not.
    assert "experiment" not in rows[0] and "export_hf" not in rows[0]
    assert f"sweep {sweep.resolve()}: 4 jobs: 2 ok, 2 no metrics" in out
    assert "job  logger     optim.lr  status      val/mlm_loss" in out
    assert "2    wandb      0.0001    no metrics  -" in out
    assert "jobs 2, 3: metrics only in W&B: no CSV" in out
    assert f"summary: {sweep.resolve() / 'summary.csv'}" in out


@pytest.mark.slow
def test_sweep_jobs_have_their_own_config_checkpoints_wandb_run_and_csv(real_sweep):
    """The jobs run one after another in one process: each keeps its own overrides, folder,
    W&B run and CSV, and none writes into another's."""
    sweep, _ = real_sweep
    for job, (logger, lr) in enumerate(SWEEP_JOBS):
        folder = sweep / str(job)
        config = OmegaConf.load(folder / ".hydra" / "config.yaml")
        assert (config.optim.lr, list(config.logger)) == (lr, LOGGERS[logger]), job
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert (folder / STATUS_FILE).read_text() == "ok\n"
        if logger == "wandb_csv":
            assert [int(r["step"]) for r in read_metrics(folder) if r["train/loss"]] == [0, 1, 2, 3]
        else:
            assert not (folder / "csv").exists(), job
    ids = [wandb_ids(sweep / str(job)) for job in range(len(SWEEP_JOBS))]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(SWEEP_JOBS), ids


def test_crashed_jobs_are_failed_rows_and_the_sweep_still_fails(tmp_path):
    """Both jobs stop in the config check (seconds): Hydra runs both, then raises; the summary
    is written at exit with the error of each job."""
    sweep = tmp_path / "sweep"
    args = ["-m", *SWEEP_ARGS, "logger=csv", "data.max_seq_length=100000,200000"]
    args.append(f"hydra.sweep.dir={sweep}")
    proc = run_cli(args, cwd=tmp_path, env_extra=THIS_CHECKOUT, check=False)

    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = read_summary(sweep)
    assert [(r["data.max_seq_length"], r["status"]) for r in rows] == [
        ("100000", "failed"),
        ("200000", "failed"),
    ]
    assert all("exceeds model.max_position_embeddings" in r["note"] for r in rows)
    assert f"sweep {sweep.resolve()}: 2 jobs: 2 failed" in proc.stdout
    assert "job 0: UserError: data.max_seq_length=100000 exceeds" in proc.stdout


def make_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    status: str | None,
    metrics: list[dict[str, str]] | None = None,
) -> Path:
    """A job folder as Hydra and the callback leave it; ``status`` None: no record written."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        (job / STATUS_FILE).write_text(status)
    if metrics is not None:
        (job / "csv").mkdir()
        with open(job / "csv" / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(metrics[0]))
            writer.writeheader()
            writer.writerows(metrics)
    return job


def val_row(step: int, loss: str, acc: str) -> dict[str, str]:
    return {"step": str(step), "train/loss": "", "val/mlm_loss": loss, "val/mlm_acc": acc}


def train_row(step: int) -> dict[str, str]:
    return {"step": str(step), "train/loss": "9.0", "val/mlm_loss": "", "val/mlm_acc": ""}


def test_hand_made_sweep_final_best_and_a_crash_mid_run(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    common = ["+experiment=tiny", "logger=csv"]
    # Job 0 improved then got worse: final differs from best.
    metrics = [train_row(1), val_row(2, "7.5", "0.10"), train_row(3), val_row(4, "8.0", "0.08")]
    make_job(sweep, 0, [*common, "optim.lr=0.0001"], "ok\n", metrics)
    # Job 1 crashed after its first validation: failed, with what it logged.
    crashed = [train_row(1), val_row(2, "7.9", "0.05"), train_row(3)]
    oom = "failed\nRuntimeError: CUDA out of memory\n"
    make_job(sweep, 1, [*common, "optim.lr=0.0003"], oom, crashed)

    main([str(sweep)])

    rows = read_summary(sweep)
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("0", "0.0001", "ok"),
        ("1", "0.0003", "failed"),
    ]
    assert (rows[0]["final val/mlm_loss"], rows[0]["best val/mlm_loss"]) == ("8.0", "7.5")
    assert (rows[0]["final val/mlm_acc"], rows[0]["best val/mlm_acc"]) == ("0.08", "0.10")
    assert "final val/nsp_acc" not in rows[0]  # logged by no job
    assert (rows[1]["final val/mlm_loss"], rows[1]["best val/mlm_loss"]) == ("7.9", "7.9")
    assert rows[1]["note"] == "RuntimeError: CUDA out of memory"
    out = capsys.readouterr().out
    assert "2 jobs: 1 ok, 1 failed" in out
    assert "0    0.0001    ok      8 (7.5)" in out
    assert "1    0.0003    failed  7.9 (7.9)" in out
    assert "job 1: RuntimeError: CUDA out of memory" in out


def test_job_without_record_is_unknown_or_failed_when_the_sweep_stopped(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["optim.lr=0.0001"], None, [val_row(2, "7.5", "0.1")])
    assert [j.status for j in summarise(sweep)] == ["unknown"]
    stopped = summarise(sweep, unrecorded="failed")
    assert [(j.status, j.note) for j in stopped] == [("failed", NO_RECORD["failed"])]


@pytest.mark.parametrize("mode", [RunMode.MULTIRUN, RunMode.RUN])
def test_job_end_is_recorded_in_sweeps_only(tmp_path, mode):
    config = OmegaConf.create({"hydra": {"mode": mode, "runtime": {"output_dir": str(tmp_path)}}})
    error = ValueError("lr must be\npositive")
    SweepSummary().on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=error))
    if mode == RunMode.RUN:  # a plain run's folder keeps the layout the README gives
        assert not (tmp_path / STATUS_FILE).exists()
    else:
        assert (tmp_path / STATUS_FILE).read_text() == "failed\nValueError: lr must be positive\n"


def test_folder_without_jobs_is_a_user_error(tmp_path, capsys):
    make_job(tmp_path / "sweep", 0, ["optim.lr=0.0001"], "ok\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "sweep" / "0")])
    assert exit_info.value.code == 2
    assert "give the sweep folder itself, not a job inside it" in capsys.readouterr().err


def test_summarising_imports_no_torch_or_lightning():
    code = "import sys, bertpt.sweep; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
