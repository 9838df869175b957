"""Every place bertpt relies on Lightning's (or torch's) internals, and nowhere else.

Each item is used where no public API does the job; each says why, and names the Lightning
releases it was checked with (pyproject.toml pins Lightning to them). When a release moves one,
tests/test_lightning_compat.py fails and names the item to update here.

This module imports neither torch nor Lightning at import time: bertpt.training.config_check reads
the Trainer's arguments through it before either is imported (that is what makes the check fast).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

# The Lightning releases the items below were read and tested with.
CHECKED_WITH = "lightning 2.6.0 and 2.6.6"


# --- the Trainer's arguments, without importing Lightning -----------------------------------
# Checked with lightning 2.6.0 and 2.6.6. inspect.signature(Trainer.__init__) is the public
# way, but importing Lightning takes seconds and bertpt.training.config_check must answer before
# that; so the arguments are read from the source file, which relies on Lightning's file layout
# (lightning/pytorch/trainer/trainer.py, class Trainer, its __init__).
TRAINER_SOURCE = ("pytorch", "trainer", "trainer.py")


def trainer_arguments() -> set[str]:
    """The arguments of ``lightning.pytorch.Trainer.__init__``, from its source (finding the
    package does not import it); empty where Lightning is not installed."""
    spec = importlib.util.find_spec("lightning")
    if spec is None or spec.origin is None:
        return set()
    source = Path(spec.origin).parent.joinpath(*TRAINER_SOURCE)
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args.args + item.args.kwonlyargs
                    return {a.arg for a in args} - {"self"}
    return set()


# --- whether Lightning writes logged metrics at this step -----------------------------------
# Checked with lightning 2.6.0 and 2.6.6. No public API says it: the rule (every
# log_every_n_steps batches that stepped, and whenever the trainer should stop) lives in the
# private `trainer._logger_connector.should_update_logs`, and reads private loop state
# (`trainer._active_loop`, `_batches_that_stepped`). A copy built from public values would
# restate that rule and drift from it silently; asking the property Lightning asks cannot.


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes logged metrics at the current step (every
    ``log_every_n_steps``). bertpt reads device metrics only then, so the host never waits
    for the GPU between log steps."""
    return trainer._logger_connector.should_update_logs


# --- the batches this epoch has taken so far --------------------------------------------------
# Checked with lightning 2.6.0 and 2.6.6. The training loader resumes mid-epoch from this count
# (bertpt.training.datamodule). `trainer.fit_loop` is public, but the count is only in its
# training epoch loop's progress tracker (`epoch_loop.batch_progress`), which Lightning does not
# document; it is what Lightning itself saves and restores to resume an epoch.


def batches_this_epoch(trainer: pl.Trainer) -> int:
    """The training batches the current epoch has processed: restored from a checkpoint on
    resume, 0 at an epoch's start."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


# --- whether the optimizer unscales fp16 gradients in its own step -----------------------------
# Checked with lightning 2.6.0 and 2.6.6, torch 2.13. Under 16-mixed, Lightning's
# MixedPrecision plugin unscales the gradients before clipping, except for an optimizer that
# unscales them in its step (a fused AdamW); it tells them apart by torch's private flag
# `optimizer._step_supports_amp_scaling` (its private `_optimizer_handles_unscaling`). bertpt
# clips itself and must take the same decision, so it reads the same flag; no public API of
# torch or Lightning exposes it.


def optimizer_unscales_in_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` unscales fp16 gradients in its step, so that Lightning has left
    them scaled for clipping."""
    return getattr(optimizer, "_step_supports_amp_scaling", False)


# --- FSDPStrategy: where the model is wrapped, and two helpers of its checkpointing ----------
# Checked with lightning 2.6.0 and 2.6.6. FSDPStrategy's public methods (setup,
# lightning_module_state_dict, optimizer_state, load_checkpoint) wrap Lightning's own logic
# (the sharded format, the optimizer state's rekeying, setup's checks and steps) around the one
# step bertpt must change (bertpt.training.fsdp says why); replacing that step keeps Lightning's
# logic, where overriding the public method would copy it. No CheckpointIO serves: FSDPStrategy
# reads and gathers its checkpoints itself.
LIGHTNING_FSDP = "lightning.pytorch.strategies.fsdp"


class FSDPWrapHook:
    """Listed before Lightning's ``FSDPStrategy`` in a subclass's bases: the subclass's
    ``wrap_model(model)`` wraps the model where Lightning would (its private
    ``FSDPStrategy._setup_model``, called by ``setup``); where it returns None, Lightning
    wraps it as usual."""

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module | None:
        return None

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        wrapped = self.wrap_model(model)
        return super()._setup_model(model) if wrapped is None else wrapped


@contextlib.contextmanager
def _replaced(module: str, name: str, value: Any) -> Iterator[None]:
    target = importlib.import_module(module)
    original = getattr(target, name)  # an AttributeError names what Lightning moved
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


def fsdp_reads_full_checkpoints_with(load: Callable[[Any], dict]) -> AbstractContextManager[None]:
    """For the length of one call of FSDPStrategy's methods: a one-file checkpoint is read
    with ``load(path)`` (Lightning's ``load_checkpoint`` calls its private ``_lazy_load``)."""
    return _replaced(LIGHTNING_FSDP, "_lazy_load", load)


def fsdp_gathers_full_state_with(
    context: Callable[..., AbstractContextManager],
) -> AbstractContextManager[None]:
    """For the length of one call of FSDPStrategy's methods: the full (unsharded) model and
    optimizer state is gathered under ``context(module, world_size, rank0_only=True)``
    (Lightning's private ``_get_full_state_dict_context``, called by
    ``lightning_module_state_dict``, ``optimizer_state`` and ``load_checkpoint``)."""
    return _replaced(LIGHTNING_FSDP, "_get_full_state_dict_context", context)
