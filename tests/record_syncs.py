"""A test-only callback: the host-device synchronisations of each training step, by CUDA's own
detector (``torch.cuda.set_sync_debug_mode("warn")``). A step's record runs from the end of the
previous batch to the end of this one: Lightning's logging of the previous step, fetching and
copying this batch to the GPU, and this step. Writes ``{"step", "syncs"}`` a line.

Recompiling after the first step raises, as in FailOnRecompile."""

import json
import warnings
from pathlib import Path

import torch
from no_recompile import FailOnRecompile


class RecordSyncs(FailOnRecompile):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
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
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"syncs_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._start()

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._stop()
