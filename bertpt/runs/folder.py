"""A run's folder: one process writes into it at a time, and its history survives resumes.

``RUN/`` holds ``checkpoints/``, ``csv/metrics.csv``, ``wandb/``, ``hf/``, ``tokenizer/`` and,
while a process trains into it, the lock file ``.bertpt.lock`` naming that process. A second
run into a folder in use stops at once; a fresh run into a folder that already holds a run is
refused (it would mix checkpoints and metrics); a resume keeps every metric logged before the
checkpoint and drops only those the resumed run logs again.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from bertpt.common.atomic import temp_beside
from bertpt.common.errors import UserError

LOCK = ".bertpt.lock"
METRICS = Path("csv") / "metrics.csv"
LAST = Path("checkpoints") / "last.ckpt"
WANDB_ID = Path("wandb") / "bertpt_run_id"
# Environment variables that launchers (Lightning's, torchrun, SLURM) set to a process's rank.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_launching_process() -> bool:
    """Whether this is global rank 0, before any process group exists: every launcher gives the
    other processes a non-zero rank in one of these variables."""
    return all(os.environ.get(v, "0") in ("", "0") for v in RANK_VARIABLES)


def _holds_a_run(run_dir: Path) -> bool:
    return (run_dir / LAST).is_file() or (run_dir / METRICS).is_file()


@contextlib.contextmanager
def claim(run_dir: Path, resume_step: int | None) -> Iterator[None]:
    """Hold ``run_dir`` for this run (on global rank 0; other ranks pass through).

    Raises UserError if another process holds it, or if a fresh run (``resume_step`` None)
    would write into a folder that holds a run. On resume, the metrics that the resumed run
    logs again (steps from ``resume_step`` on) are dropped from ``csv/metrics.csv``.
    """
    if not is_launching_process():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    fd = _lock(lock)
    try:
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(
            fd, f"process {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0
        )
        if resume_step is None and _holds_a_run(run_dir):
            raise UserError(
                f"{run_dir} already holds a run — resume it with ckpt_path=last, or choose "
                "another hydra.run.dir for a new run"
            )
        if resume_step is not None:
            keep_metrics_before(run_dir, resume_step)
        try:
            yield
        except BaseException:
            if resume_step is None:
                _remove_if_nothing_to_keep(run_dir)
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # still locked by us: the next run finds no holder
        os.close(fd)


def _lock(lock: Path) -> int:
    """An open descriptor of ``lock``, locked by this process; UserError naming the holder."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"run folder {lock.parent} is in use by {holder} — wait for it to finish, or "
                "choose another hydra.run.dir"
            ) from None
        # A holder removes the file while it still holds it: a lock taken on the removed file
        # would guard nothing, so it is taken again on the file that is there now.
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        os.close(fd)


# What Hydra and a run write into a run folder; a fresh run that failed before it logged a
# metric or wrote a checkpoint takes them away again (nothing else: the folder may be the user's).
RUN_ENTRIES = (".hydra", "checkpoints", "csv", "wandb", "tokenizer", "hf", "tensorboard")


def _remove_if_nothing_to_keep(run_dir: Path) -> None:
    metrics = run_dir / METRICS
    logged = metrics.is_file() and len(metrics.read_text().splitlines()) > 1  # beyond a header
    if logged or (run_dir / LAST).is_file():
        return
    for name in RUN_ENTRIES:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    if HydraConfig.initialized():  # Hydra's log of this job
        (run_dir / f"{HydraConfig.get().job.name}.log").unlink(missing_ok=True)
    (run_dir / LOCK).unlink(missing_ok=True)  # ours, still held: no other run is in there
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only if nothing else is left in it


def keep_metrics_before(run_dir: Path, step: int) -> None:
    """Drop the rows of ``csv/metrics.csv`` from ``step`` on (logged after the checkpoint the
    run resumes from, and logged again by it); the rewrite is atomic."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if r.get("step", "") == "" or int(r["step"]) < step]
    if len(kept) == len(rows):
        return
    with temp_beside(path) as (fd, tmp):
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)


def wandb_run_id(run_dir: Path, resume: bool) -> str:
    """The W&B run id of this folder: the same across resumes, a new one for a fresh run."""
    path = run_dir / WANDB_ID
    if resume and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id
