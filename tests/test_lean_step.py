"""A training step never makes the host wait for the device: metrics are read every
``log_every_n_steps`` only.

A CPU has no host-device sync to observe, so the real Trainer runs here under a dispatch mode
that records every operation that would be one on a GPU (reading a value: ``.item()``,
``float()``, ``bool()``, ``.tolist()``; and data-dependent shapes: ``nonzero``, boolean
indexing, ``masked_select``), from the start of each training batch to its end. The unpadded
path is on, so the token index the model needs is the one built on the host before the batch is
copied.
tests/test_gpu.py checks the same with CUDA's own sync detector.
"""

from __future__ import annotations

import traceback
from typing import ClassVar

import lightning.pytorch as pl
import torch
from runs import make_cfg
from torch.utils._python_dispatch import TorchDispatchMode

from bertpt.train import train

aten = torch.ops.aten
CPU_ATTENTION = "torch/nested/_internal/sdpa.py"
SYNCING = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.is_nonzero.default,
    aten.equal.default,
}


class _Record(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __enter__(self):
        # .tolist() reads a tensor without dispatching an operation: counted by a wrapper.
        self._tolist = torch.Tensor.tolist
        record, tolist = self._record, self._tolist

        def counted_tolist(tensor):
            record("tolist")
            return tolist(tensor)

        torch.Tensor.tolist = counted_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def _record(self, what: str) -> None:
        stack = traceback.extract_stack()
        # torch's CPU fallback for jagged attention splits the batch into its sequences by
        # their lengths; on a GPU the same call is one FlashAttention kernel.
        if not any(f.filename.endswith(CPU_ATTENTION) for f in stack):
            ours = [f"{f.name}:{f.lineno}" for f in stack if "/bertpt/" in f.filename]
            self.calls.append(f"{what} in {' < '.join(reversed(ours[-3:]))}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if func in SYNCING or boolean_index:
            self._record(str(func))
        return func(*args, **(kwargs or {}))


class SyncRecorder(pl.Callback):
    """What each training batch did that would wait for a GPU, by step."""

    steps: ClassVar[dict[int, list[str]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mode = _Record()
        self._mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._mode.__exit__(None, None, None)
        SyncRecorder.steps[trainer.global_step - 1] = self._mode.calls


def test_no_sync_between_log_steps(tmp_path, data_dir):
    SyncRecorder.steps = {}
    cfg = make_cfg(
        tmp_path / "run", data_dir, "+experiment=tiny", "+debug=fast",
        "optim.max_steps=7", "trainer.log_every_n_steps=3", "trainer.val_check_interval=1000",
        "model.unpad=true", "export_hf=false", "logger=csv",
        f"+callbacks.sync_recorder._target_={SyncRecorder.__module__}.SyncRecorder",
    )  # fmt: skip
    train(cfg)
    steps = SyncRecorder.steps
    assert sorted(steps) == list(range(7))
    log_steps = {2, 5, 6}  # steps 3 and 6 of the run (log_every_n_steps=3), and the last
    for step, calls in steps.items():
        if step in log_steps:  # one read of the window's sums
            assert len(calls) == 1 and "_log_window" in calls[0], (step, calls)
        else:
            assert not calls, f"step {step} waits for the device: {calls}"
