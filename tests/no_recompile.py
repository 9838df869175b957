"""A test-only callback: after the first training step (which compiles, once per distinct layer
call), any recompilation of a training step raises (``torch.compiler.set_stance(
"fail_on_recompile")``). Validation, which compiles the layers' eval mode, is let through."""

import lightning.pytorch as pl
import torch


class FailOnRecompile(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.compiler.set_stance("fail_on_recompile")

    def on_validation_start(self, trainer, pl_module) -> None:
        torch.compiler.set_stance("default")

    def on_validation_end(self, trainer, pl_module) -> None:
        torch.compiler.set_stance("fail_on_recompile")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.compiler.set_stance("default")
