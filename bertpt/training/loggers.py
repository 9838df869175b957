"""The run's loggers (conf/logger): W&B offline and CSV by default, never a reason to crash.

W&B is started here, before training, so that a missing or broken wandb (not installed, a bad
``WANDB_*`` setting, an unwritable folder) costs one warning and the run goes on with CSV,
instead of failing at the first logged step. Across resumes the history continues: W&B resumes
the folder's run id, and the CSV file is appended to (Lightning's CSV logger deletes it).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` instead of deleting it
    (the rows a resumed run logs again were dropped before: see bertpt.runs.folder)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger (conf/logger/wandb.yaml) without the ``anonymous`` argument it
    always passes, which current wandb warns about on every run and ignores."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger whose ``metrics.csv`` survives a resume (conf/logger/csv.yaml)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _start(name: str, conf: Any, wandb_id: str | None) -> Logger | None:
    try:
        is_wandb = str(conf.get("_target_", "")).endswith("WandbLogger")
        extra = {"id": wandb_id} if is_wandb and wandb_id else {}  # Lightning resumes by id
        logger = hydra.utils.instantiate(conf, **extra)
        if isinstance(logger, LightningWandbLogger):
            logger.experiment  # noqa: B018  (starts the run on rank 0; a no-op on other ranks)
    except Exception as e:  # a logger is optional: whatever stops it, the run goes on without it
        cause = e.__cause__ or e
        reason = " ".join(str(cause).split())[:200] or type(cause).__name__
        log.warning("logger %s cannot start (%s): going on without it", name, reason)
        return None
    return logger


def build_loggers(group: Any, output_dir: str | Path, wandb_id: str | None) -> list[Logger]:
    """The loggers of ``cfg.logger``, W&B under ``wandb_id``; a CSV logger takes the place of
    any that cannot start."""
    if not group:
        return []
    loggers, failed = [], False
    for name, conf in group.items():
        if conf and "_target_" in conf:
            logger = _start(name, conf, wandb_id)
            failed |= logger is None
            loggers += [logger] if logger else []
    if failed and not any(isinstance(lg, LightningCSVLogger) for lg in loggers):
        loggers.append(CSVLogger(save_dir=output_dir, name="csv", version=""))
    return loggers


def finish_loggers(loggers: list[Logger]) -> None:
    """End the W&B run of this job, so that the next job of a sweep (same process) starts its
    own instead of logging into this one."""
    for logger in loggers:
        if isinstance(logger, LightningWandbLogger):
            logger.experiment.finish()  # a no-op stand-in on ranks other than 0
