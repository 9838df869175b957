"""BERT's optimizer recipe, apart from Lightning: AdamW with no weight decay on biases and
LayerNorm weights, and a learning rate that warms up, then decays linearly to zero.

Pretraining (``bertpt.training.module``) and the fine-tuning probe (``bertpt.probing``) both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

# Parameters that BERT excludes from weight decay (Google's optimization.py: "LayerNorm", "bias").
NO_DECAY = ("bias", "LayerNorm.weight")


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float
) -> list[dict]:
    """AdamW groups: the trainable parameters with ``weight_decay``, and those of NO_DECAY."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_linear_decay(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: 0 -> 1 over warmup_steps, then 1 -> 0 linearly at max_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return factor
