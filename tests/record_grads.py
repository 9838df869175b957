"""A test-only callback: the gradient norm before clipping and after the optimizer step."""

import json
from pathlib import Path

import lightning.pytorch as pl
import torch


def _norm(module: torch.nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else float("nan")


class RecordGrads(pl.Callback):
    """Writes ``{"step", "before", "after"}`` a line: ``before`` is taken where Lightning hands
    the gradients to clipping (for fp16 without a fused optimizer they are unscaled by then),
    ``after`` once the optimizer has stepped (the gradients it used)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.before: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before = _norm(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        row = {"step": trainer.global_step - 1, "before": self.before, "after": _norm(pl_module)}
        with open(self.out_dir / f"grads_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
