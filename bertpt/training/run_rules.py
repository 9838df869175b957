"""Rules a run's settings must meet on the machine it runs on: the batch against the processes,
``on_nan=skip`` against their number, ``ckpt_path`` against the files.

Without torch: the config check (``bertpt.training.config_check``) applies them before torch is
imported where the values are known then (a CPU run's device count, a checkpoint's path), and the
DataModule, LightningModule and ``bertpt.training.fit`` once the Trainer knows the rest. Each broken
rule is one :class:`~bertpt.common.errors.UserError`, ``<what> — <fix>``.
"""

from __future__ import annotations

import math
from pathlib import Path

from bertpt.common.errors import UserError
from bertpt.runs.folder import LAST


def per_device_batch_size(global_batch: int, world: int, accumulation: int) -> int:
    """``global / (devices x nodes x accumulation)``, which must divide exactly."""
    denom = world * accumulation
    if global_batch % denom or global_batch < denom:
        example = max(denom, math.ceil(global_batch / denom) * denom)
        raise UserError(
            f"data.global_batch_size={global_batch} is not divisible by devices x nodes x "
            f"accumulate_grad_batches ({world} x {accumulation} = {denom}) — pick a multiple of "
            f"{denom}, e.g. {example}"
        )
    return global_batch // denom


def skip_in_one_process(world: int) -> None:
    """on_nan=skip needs one process: Lightning cannot skip a step in distributed training (a
    training_step that returns None raises there)."""
    if world != 1:
        raise UserError(
            f"on_nan=skip works in one process only, and this run has {world} — use on_nan=stop "
            "(the default) and resume from the last checkpoint with a lower optim.lr"
        )


def checkpoint_path(ckpt_path: str, run_dir: Path) -> Path:
    """The file ``ckpt_path`` names: ``last`` is this run's last.ckpt, a run folder its
    last.ckpt, anything else a file. Raises UserError if there is none."""
    path = run_dir / LAST if ckpt_path == "last" else Path(ckpt_path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        fix = (
            "ckpt_path=last resumes the run in hydra.run.dir: set hydra.run.dir=<that run's folder>"
            if ckpt_path == "last"
            else "give a .ckpt file or a run folder"
        )
        raise UserError(f"ckpt_path={ckpt_path}: no checkpoint at {path} — {fix}")
    return path
