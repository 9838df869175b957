"""A test-only callback: the host-device synchronisations of each training step, by CUDA's own
detector (``torch.cuda.set_sync_debug_mode("warn")``). A step's record runs from the end of the
previous batch to the end of this one: Lightning's logging of the previous step, fetching and
copying this batch to the GPU, and this step. Writes ``{"step", "syncs"}`` a line.

After the first step (which compiles, once per distinct layer call), any recompilation of a
training step raises (``torch.compiler.set_stance("fail_on_recompile")``); validation, which
compiles the layers' eval mode, is let through."""

import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordSyncs(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self._caught = None

    def _start(self) -> None:
        self._caught = warnings.catch_warnings(record=True)
        self._warnings = self._caught.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def _stop(self) -> list[str]:
        torch.cuda.set_sync_debug_mode("default")
        self._caught.__exit__(None, None, None)
        messages = [str(w.message) for w in self._warnings]
        return [m.splitlines()[0] for m in messages if "synchroniz" in m]

    def on_train_start(self, trainer, pl_module) -> None:
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {"step": trainer.global_step - 1, "syncs": self._stop()}
        torch.compiler.set_stance("fail_on_recompile")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"syncs_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._start()

    def on_validation_start(self, trainer, pl_module) -> None:
        torch.compiler.set_stance("default")

    def on_validation_end(self, trainer, pl_module) -> None:
        torch.compiler.set_stance("fail_on_recompile")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.compiler.set_stance("default")
        self._stop()
