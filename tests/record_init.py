"""A test-only callback: the weights a run starts from, before its first optimizer step."""

from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordInitialWeights(pl.Callback):
    """Saves the module's full state dict (keys ``model.*``) to ``OUT_DIR/initial.pt`` when
    training starts. It asks the strategy for it, as a checkpoint does: under FSDP every rank
    takes part in gathering the full weights from the shards, and rank 0 writes them."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_start(self, trainer, pl_module) -> None:
        state = trainer.strategy.lightning_module_state_dict()  # a collective under FSDP
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            weights = {k: v.detach().cpu().clone() for k, v in state.items()}
            torch.save(weights, self.out_dir / "initial.pt")
