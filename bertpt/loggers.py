"""The run's loggers (conf/logger): W&B offline and CSV by default, never a reason to crash.

W&B is started here, before training, so that a missing or broken wandb (not installed, a bad
``WANDB_*`` setting, an unwritable folder) costs one warning and the run goes on with CSV,
instead of failing at the first logged step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

log = logging.getLogger(__name__)


def _start(name: str, conf: Any) -> Logger | None:
    try:
        logger = hydra.utils.instantiate(conf)
        if isinstance(logger, WandbLogger):
            logger.experiment  # noqa: B018  (starts the run on rank 0; a no-op on other ranks)
    except Exception as e:  # a logger is optional: whatever stops it, the run goes on without it
        cause = e.__cause__ or e
        reason = " ".join(str(cause).split())[:200] or type(cause).__name__
        log.warning("logger %s cannot start (%s): going on without it", name, reason)
        return None
    return logger


def build_loggers(group: Any, output_dir: str | Path) -> list[Logger]:
    """The loggers of ``cfg.logger``; a CSV logger takes the place of any that cannot start."""
    if not group:
        return []
    loggers, failed = [], False
    for name, conf in group.items():
        if conf and "_target_" in conf:
            logger = _start(name, conf)
            failed |= logger is None
            loggers += [logger] if logger else []
    if failed and not any(isinstance(lg, CSVLogger) for lg in loggers):
        loggers.append(CSVLogger(save_dir=output_dir, name="csv", version=""))
    return loggers
