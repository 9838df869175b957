"""Pretrain BERT: ``python -m bertpt.train +experiment=mini [key=value ...]``.

``train(cfg)`` checks a composed config, then builds everything, fits, exports and returns the
metrics; ``main`` is the Hydra wrapper around it. Tests call ``train`` directly.

A user's mistake stops the command in one line, ``error: <what> — <fix>``, exit status 2, before
torch and Lightning are imported and before Hydra makes the run folder: the command line is
checked first, then the composed config (a Hydra callback, conf/hydra/default.yaml).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bertpt.common.errors import exit_on_user_error
from bertpt.training.config_check import check_config, check_overrides

# oneDNN, which runs a CPU's bf16 matrix products (trainer.precision=auto on AMX), compiles and
# caches a kernel per shape, 1,024 by default. A run's shapes (sequence lengths x masked rows,
# in training and validation) outnumber that: past the first validation a mini run in bf16
# fell from ~175 to ~100 seq/s, recompiling evicted kernels; with 16,384 it stays at ~175.
# Read when torch first uses oneDNN, after this module (which imports no torch).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")


def train(cfg: DictConfig) -> dict[str, float]:
    """Pretrain with a composed config; return the final metrics (for sweepers and tests)."""
    check_config(cfg, Path(cfg.paths.output_dir))
    from bertpt.training.fit import pretrain  # torch and Lightning: only for a good config

    return pretrain(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep a job's mistake fails that job (Hydra goes on with the others and the sweep's
    # summary names it); in a single run it ends the command in one line.
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    with contextlib.nullcontext() if sweep else exit_on_user_error():
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with exit_on_user_error():
        check_overrides(sys.argv[1:])
    main()
