"""Test-only callbacks that inject faults into a real run."""

import lightning.pytorch as pl
import torch


class NanAtSteps(pl.Callback):
    """The loss of the given steps is NaN: a weight is NaN during that step's forward only."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)
        self.saved: torch.Tensor | None = None

    def _weight(self, pl_module) -> torch.Tensor:
        return pl_module.model.cls.seq_relationship.weight

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            w = self._weight(pl_module)
            self.saved = w.detach().clone()
            with torch.no_grad():
                w.fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.saved is not None:
            with torch.no_grad():
                self._weight(pl_module).copy_(self.saved)
            self.saved = None
