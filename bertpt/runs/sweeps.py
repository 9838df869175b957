"""Summarise a sweep: one row per job with its swept overrides, validation metrics and status.

``SweepSummary`` is a Hydra callback (registered in ``conf/hydra/default.yaml``): after a
multirun it prints an aligned table and writes ``summary.csv`` in the sweep folder.
``python -m bertpt.sweep SWEEP_DIR`` does the same for an existing sweep folder.

Only files are read, each job folder's ``.hydra/overrides.yaml`` and ``.hydra/config.yaml``,
``csv/metrics.csv`` (Lightning's CSVLogger) and ``job_status.txt`` (written by the callback when
the job ends), so this module imports no torch and no Lightning: summarising takes a moment.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from bertpt.common.atomic import temp_beside
from bertpt.common.errors import UserError, exit_on_user_error
from bertpt.runs.folder import METRICS as METRICS_CSV
from bertpt.runs.history import final_and_best, metric_series, read_overrides, read_yaml

log = logging.getLogger(__name__)

# The validation metrics summarised, in column order; a column appears if any job logged it.
METRICS = ("val/mlm_loss", "val/mlm_acc", "val/nsp_acc", "val/nsp_loss", "val/probe_acc")
STATUS_FILE = "job_status.txt"
SUMMARY_FILE = "summary.csv"
# Why a job has no job_status.txt, by the status it is given then.
NO_RECORD = {
    "unknown": "no job_status.txt: the job was killed, is still running, or predates bertpt.sweep",
    "failed": "no job_status.txt: the job was running when the sweep stopped",
}


@dataclass
class JobSummary:
    """One job of a sweep; ``metrics`` maps a name to its (final, best) value as logged."""

    name: str
    folder: Path
    overrides: dict[str, str]
    status: str
    metrics: dict[str, tuple[str, str]] = field(default_factory=dict)
    note: str = ""


def _loggers(job_dir: Path) -> list[str]:
    """Class names of the loggers in the job's config (``logger`` group)."""
    cfg = read_yaml(job_dir / ".hydra" / "config.yaml") or {}
    group = cfg.get("logger") or {}
    targets = (c.get("_target_", "") for c in group.values() if isinstance(c, dict))
    return [t.rsplit(".", 1)[-1] for t in targets if t]


def _why_no_metrics(job_dir: Path) -> str:
    if (job_dir / METRICS_CSV).is_file():
        return "no validation logged yet"
    loggers = _loggers(job_dir)
    if "WandbLogger" in loggers:
        return "metrics only in W&B: no CSV"
    return f"no csv/metrics.csv (loggers: {', '.join(loggers) or 'none'})"


def _recorded_status(job_dir: Path) -> tuple[str, str] | None:
    path = job_dir / STATUS_FILE
    if not path.is_file():
        return None
    status, _, note = path.read_text().strip().partition("\n")
    return status, note


def summarise_job(job_dir: Path, unrecorded: str = "unknown") -> JobSummary:
    """A job's row; ``unrecorded`` is the status of a job whose end was never recorded."""
    metrics = final_and_best(metric_series(job_dir), METRICS)
    recorded = _recorded_status(job_dir)
    status, note = recorded or (unrecorded, NO_RECORD[unrecorded])
    if status != "failed" and not metrics:
        status, note = "no metrics", _why_no_metrics(job_dir)
    return JobSummary(job_dir.name, job_dir, read_overrides(job_dir), status, metrics, note)


def _job_order(job_dir: Path) -> tuple[int, str]:
    name = job_dir.name
    return (int(name), name) if name.isdigit() else (sys.maxsize, name)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (those Hydra wrote ``.hydra/overrides.yaml`` in), by number."""
    found = (p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml"))
    return sorted(found, key=_job_order)


def summarise(sweep_dir: Path, unrecorded: str = "unknown") -> list[JobSummary]:
    return [summarise_job(d, unrecorded) for d in job_dirs(sweep_dir)]


def _sweeper_params(job: JobSummary) -> set[str]:
    """Keys a sweeper searched (``hydra.sweeper.params``, e.g. Optuna's), from the job's config."""
    hydra_cfg = read_yaml(job.folder / ".hydra" / "hydra.yaml") or {}
    params = ((hydra_cfg.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return {key.lstrip("+~") for key in params}


def swept_keys(jobs: list[JobSummary]) -> list[str]:
    """Override keys that tell the jobs apart: searched by the sweeper, or differing by job."""
    searched = _sweeper_params(jobs[0]) if jobs else set()
    keys = dict.fromkeys(k for job in jobs for k in job.overrides)
    return [k for k in keys if k in searched or len({job.overrides.get(k) for job in jobs}) > 1]


def _metric_names(jobs: list[JobSummary]) -> list[str]:
    return [m for m in METRICS if any(m in job.metrics for job in jobs)]


def summary_rows(jobs: list[JobSummary]) -> list[dict[str, str]]:
    """The rows of summary.csv: job, swept keys, status, final and best metrics, note, folder."""
    keys, metrics = swept_keys(jobs), _metric_names(jobs)
    rows = []
    for job in jobs:
        row = {"job": job.name, **{k: job.overrides.get(k, "") for k in keys}}
        row["status"] = job.status
        for m in metrics:
            final, best = job.metrics.get(m, ("", ""))
            row[f"final {m}"], row[f"best {m}"] = final, best
        row["note"], row["folder"] = job.note, str(job.folder.resolve())
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, str]]) -> Path:
    """Write ``summary.csv`` in the sweep folder, whole or not at all (a sweep may be re-read)."""
    out = Path(sweep_dir) / SUMMARY_FILE
    with temp_beside(out) as (fd, tmp):
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    return out


def _short(value: str) -> str:
    """An override value for the table: Optuna's floats (0.0006554064060987877) to 4 digits."""
    try:
        return f"{float(value):.4g}" if len(value) > 8 else value
    except ValueError:
        return value


def _final_best(final: str, best: str) -> str:
    return f"{float(final):.4g} ({float(best):.4g})"


def _notes(jobs: list[JobSummary]) -> dict[str, list[str]]:
    """Each distinct note and the jobs it is about (old sweeps give every job the same one)."""
    notes: dict[str, list[str]] = {}
    for job in jobs:
        if job.note:
            notes.setdefault(job.note, []).append(job.name)
    return notes


def _jobs_label(names: list[str]) -> str:
    return f"job {names[0]}" if len(names) == 1 else f"jobs {', '.join(names)}"


def format_table(jobs: list[JobSummary]) -> str:
    """An aligned table: one line per job, each metric as ``final (best)``, notes below it."""
    keys, metrics = swept_keys(jobs), _metric_names(jobs)
    header = ["job", *keys, "status", *metrics]
    lines = [header]
    for job in jobs:
        cells = [_final_best(*job.metrics[m]) if m in job.metrics else "-" for m in metrics]
        values = (_short(job.overrides.get(k, "")) for k in keys)
        lines.append([job.name, *values, job.status, *cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    if metrics:
        table.append("metrics: final (best: min for losses, max for accuracies)")
    table += [f"{_jobs_label(names)}: {note}" for note, names in _notes(jobs).items()]
    return "\n".join(table)


def report(sweep_dir: Path, unrecorded: str = "unknown") -> Path | None:
    """Print the table and write summary.csv for a sweep folder; None if it holds no job."""
    jobs = summarise(sweep_dir, unrecorded)
    if not jobs:
        return None
    out = write_summary(sweep_dir, summary_rows(jobs))
    counts = Counter(job.status for job in jobs)
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"\nsweep {Path(sweep_dir).resolve()}: {len(jobs)} jobs: {tally}")
    print(format_table(jobs))
    print(f"summary: {out.resolve()}", flush=True)
    return out


def record_status(job_dir: Path, job_return: JobReturn) -> None:
    """Write ``ok`` or ``failed`` and the error beside the job's outputs."""
    if job_return.status == JobStatus.COMPLETED:
        text = "ok\n"
    else:
        # The public ``return_value`` re-raises the job's exception; only its text is wanted.
        error = job_return._return_value
        text = f"failed\n{type(error).__name__}: {' '.join(str(error).split())[:300]}\n"
    (job_dir / STATUS_FILE).write_text(text)


class SweepSummary(Callback):
    """Hydra callback: record each job's status, summarise the sweep when it ends."""

    def __init__(self) -> None:
        self._pending: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra's sweepers re-raise a failed job's exception after the batch has run, so
        # on_multirun_end never comes after a crash (nor after Ctrl-C): summarise at exit then.
        self._pending = Path(config.hydra.sweep.dir)
        atexit.register(self._summarise_at_exit)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            record_status(Path(config.hydra.runtime.output_dir), job_return)
        except OSError as e:  # a record is a convenience: never the reason a job fails
            log.warning("could not record the job's status: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = None
        self._report(Path(config.hydra.sweep.dir), unrecorded="unknown")

    def _summarise_at_exit(self) -> None:
        if self._pending is not None:
            # A job without a record was running when the sweep stopped.
            self._report(self._pending, unrecorded="failed")
            self._pending = None

    @staticmethod
    def _report(sweep_dir: Path, unrecorded: str) -> None:
        try:
            if report(sweep_dir, unrecorded) is None:
                print(f"\nsweep {sweep_dir}: no job folders", flush=True)
        except (OSError, ValueError, yaml.YAMLError) as e:  # the sweep itself has finished
            log.warning(
                "could not summarise %s (%s): python -m bertpt.sweep %s", sweep_dir, e, sweep_dir
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.sweep",
        description="Print the summary of a sweep and (re)write its summary.csv.",
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a sweep folder: outputs/train/multiruns/DATE_TIME"
    )
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if not args.sweep_dir.is_dir():
            raise UserError(
                f"no folder {args.sweep_dir} — give a sweep folder: "
                "outputs/train/multiruns/DATE_TIME"
            )
        if report(args.sweep_dir) is None:
            raise UserError(
                f"{args.sweep_dir} holds no job folders (N/.hydra/overrides.yaml) — give the sweep "
                "folder itself, not a job inside it"
            )
