"""FSDP as bertpt runs it: Lightning's ``FSDPStrategy`` with one unit per ``BertLayer``.

Two differences from Lightning's strategy, both about running it for real:

* A full checkpoint (``state_dict_type: full``, one file) is read with
  ``torch.load(mmap=True, weights_only=True)``. Lightning reads it with its own lazy unpickler,
  which fails on the storages of current torch releases (Lightning issue #20373:
  ``'UntypedStorage' object has no attribute 'dtype'``), so a run could not resume. Memory-mapped,
  the file is as lazy: each rank pages in only what it copies into its shard.
* It runs on CPU processes too (gloo), so that saving, resuming and exporting a sharded model is
  tested on a machine without a GPU. torch's FSDP runs there when it is given the device
  explicitly; Lightning passes the CUDA device index, which a CPU does not have (and its
  accelerator check refuses a CPU for its own strategy class, not for a subclass). There the
  gathered full state is not "offloaded to the CPU" it is already on: torch frees the memory the
  gathered tensors still view, and the process crashes.

Both fixes replace one step inside Lightning's methods (through bertpt.training.lightning_compat,
where every use of Lightning's internals lives), rather than copying the methods around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel

from bertpt.model.bert import BertLayer
from bertpt.model.checkpoint import load_torch_file
from bertpt.training import lightning_compat


def wrap_policy():
    """Shard each transformer layer on its own; the tied embedding and decoder stay in the root."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    return partial(transformer_auto_wrap_policy, transformer_layer_cls={BertLayer})


def _full_state_dict_context(module: torch.nn.Module, world_size: int, rank0_only: bool = True):
    """Lightning's full-state-dict context, offloading to the CPU only from another device."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    offload = next(module.parameters()).device.type != "cpu"
    return FullyShardedDataParallel.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(
            offload_to_cpu=offload, rank0_only=rank0_only
        ),
    )


@contextlib.contextmanager
def _fixed_lightning_helpers() -> Iterator[None]:
    with (
        lightning_compat.fsdp_reads_full_checkpoints_with(load_torch_file),
        lightning_compat.fsdp_gathers_full_state_with(_full_state_dict_context),
    ):
        yield


class FSDPStrategy(lightning_compat.FSDPWrapHook, LightningFSDPStrategy):
    """Lightning's FSDP, resuming from full checkpoints and running on CPU processes as well."""

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """On CPU processes, FSDP given the device itself; elsewhere Lightning's wrapping."""
        if self.root_device.type != "cpu":
            return None
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _fixed_lightning_helpers():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        with _fixed_lightning_helpers():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        # Sharded (directory) checkpoints do not go through the substituted helpers.
        with _fixed_lightning_helpers():
            return super().load_checkpoint(checkpoint_path, weights_only=True)
