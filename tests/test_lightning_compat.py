"""bertpt.training.lightning_compat: each internal of Lightning (or torch) that bertpt relies on
still exists in the installed release with the shape bertpt relies on, and each compat item works
for real, with a real Trainer on a tiny model. A failure names the item that moved: update
bertpt/training/lightning_compat.py (and the pin in pyproject.toml) for that release."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import lightning
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from runs import free_port
from torch.utils.data import DataLoader, TensorDataset

from bertpt.training import lightning_compat as compat

UPDATE = f"update bertpt/training/lightning_compat.py (checked with {compat.CHECKED_WITH})"


def moved(item: str) -> str:
    return f"lightning {lightning.__version__} moved {item}: {UPDATE}"


def internal(module: str, name: str):
    """``module.name``, or a failure that names it."""
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        found = None
    assert found is not None, moved(f"{module}.{name}")
    return found


def calls(function, name: str) -> bool:
    """Whether ``function``'s source calls ``name``."""
    return f"{name}(" in inspect.getsource(function)


class Tiny(pl.LightningModule):
    """Lightning's BoringModel, smaller: a linear layer fitted to nothing in particular."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(data), batch_size=4)


def tiny_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(max_steps=max_steps, **{**options, **kwargs})


# --- the Trainer's arguments ------------------------------------------------------------------


def test_trainer_arguments_are_those_of_the_trainer():
    source = Path(lightning.__file__).parent.joinpath(*compat.TRAINER_SOURCE)
    assert source.is_file(), moved(f"the Trainer's source file ({source})")
    public = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    assert compat.trainer_arguments() == public, moved("Trainer.__init__ out of trainer.py")
    assert {"max_steps", "precision", "strategy"} <= compat.trainer_arguments()


# --- whether Lightning writes logged metrics at this step -------------------------------------


def test_logs_this_step_reads_lightnings_flag():
    connectors = "lightning.pytorch.trainer.connectors.logger_connector"
    _LoggerConnector = internal(connectors, "_LoggerConnector")
    connector = getattr(tiny_trainer(1), "_logger_connector", None)
    assert isinstance(connector, _LoggerConnector), moved("Trainer._logger_connector")
    flag = inspect.getattr_static(_LoggerConnector, "should_update_logs", None)
    assert isinstance(flag, property), moved("_LoggerConnector.should_update_logs")


class RecordLogs(Logger):
    """The steps at which Lightning wrote each metric."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, list[int]] = {}

    name, version = "record", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for key in metrics:
            self.steps.setdefault(key, []).append(step)


class LogsOnLogSteps(Tiny):
    """Logs only where `logs_this_step` says Lightning writes, as bertpt.training.module does (in
    optimizer_step) and bertpt.training.console reads (in on_train_batch_end)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_step: list[int] = []
        self.at_batch_end: list[int] = []

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if compat.logs_this_step(self.trainer):  # the step is counted once the hook returns
            self.in_step.append(self.global_step)
            self.log("x", float(self.global_step))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if compat.logs_this_step(self.trainer):
            self.at_batch_end.append(self.global_step - 1)


def test_what_is_logged_on_log_steps_is_written_then():
    """A metric logged exactly at the steps `logs_this_step` names is written at each of them,
    and at no other: bertpt's device metrics reach the logger every log_every_n_steps."""
    logger, module = RecordLogs(), LogsOnLogSteps()
    tiny_trainer(10, logger=logger, log_every_n_steps=3).fit(module)
    assert module.in_step == [2, 5, 8], module.in_step
    assert module.at_batch_end == module.in_step
    assert logger.steps["x"] == module.in_step, (logger.steps, module.in_step)


# --- the batches this epoch has taken so far ---------------------------------------------------


class CountsBatches(Tiny):
    """Records `batches_this_epoch` as each training batch starts (16 batches an epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.seen.append(compat.batches_this_epoch(self.trainer))


def test_batches_this_epoch_counts_within_an_epoch_and_survives_a_resume(tmp_path):
    """What the training loader resumes from: 0..15 in each epoch, and after a resume from step
    20 the count Lightning restored (4, the 5th batch of epoch 1)."""
    module = CountsBatches()
    trainer = tiny_trainer(20, default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(module)
    assert module.seen == [*range(16), *range(4)], moved("fit_loop.epoch_loop.batch_progress")
    trainer.save_checkpoint(tmp_path / "at20.ckpt")
    resumed = CountsBatches()
    tiny_trainer(22, default_root_dir=tmp_path).fit(resumed, ckpt_path=tmp_path / "at20.ckpt")
    assert resumed.seen == [4, 5], resumed.seen


# --- whether the optimizer unscales fp16 gradients in its own step ------------------------------


def _adamw(fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=fused)


def test_optimizer_unscales_in_step_as_lightning_decides():
    from lightning.pytorch.plugins.precision import MixedPrecision

    assert compat.optimizer_unscales_in_step(_adamw(fused=True)), (
        f"torch {torch.__version__} no longer flags a fused AdamW with "
        f"_step_supports_amp_scaling: {UPDATE}"
    )
    assert not compat.optimizer_unscales_in_step(_adamw(fused=False))
    lightnings = internal("lightning.fabric.plugins.precision.amp", "_optimizer_handles_unscaling")
    for fused in (True, False):
        ours = compat.optimizer_unscales_in_step(_adamw(fused))
        assert lightnings(_adamw(fused)) == ours, moved(f"the unscaling check (fused={fused})")
    assert calls(MixedPrecision.optimizer_step, "_optimizer_handles_unscaling"), moved(
        "MixedPrecision.optimizer_step's unscaling check"
    )


class ClipsAfterUnscaling(Tiny):
    """bertpt.training.module's clipping under a GradScaler: unscale where Lightning left it to the
    optimizer's step; then the gradients must have been unscaled exactly once."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.unscaled_once: list[bool] = []

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, fused=self.fused)

    def configure_gradient_clipping(self, optimizer, *args, **kwargs) -> None:
        scaler = self.trainer.precision_plugin.scaler
        if compat.optimizer_unscales_in_step(optimizer):
            scaler.unscale_(optimizer)
        try:  # a second unscale_ since the last update is refused: it was unscaled already
            scaler.unscale_(optimizer)
            self.unscaled_once.append(False)
        except RuntimeError:
            self.unscaled_once.append(True)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_fp16_gradients_are_unscaled_once_before_clipping(fused):
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module = ClipsAfterUnscaling(fused)
    tiny_trainer(3, plugins=[plugin], gradient_clip_val=1.0).fit(module)
    assert module.unscaled_once == [True, True, True], module.unscaled_once


# --- FSDPStrategy: where the model is wrapped, and two helpers of its checkpointing -----------


def test_fsdp_internals_are_where_bertpt_replaces_them():
    from lightning.pytorch.strategies import FSDPStrategy

    setup_model = getattr(FSDPStrategy, "_setup_model", None)
    assert setup_model is not None, moved("FSDPStrategy._setup_model")
    assert list(inspect.signature(setup_model).parameters) == ["self", "model"], moved(
        "FSDPStrategy._setup_model(model)"
    )
    assert calls(FSDPStrategy.setup, "self._setup_model"), moved("FSDPStrategy.setup's wrapping")

    assert callable(internal(compat.LIGHTNING_FSDP, "_lazy_load"))
    assert calls(FSDPStrategy.load_checkpoint, "_lazy_load"), moved(
        "FSDPStrategy.load_checkpoint's _lazy_load"
    )
    context = internal(compat.LIGHTNING_FSDP, "_get_full_state_dict_context")
    assert list(inspect.signature(context).parameters) == ["module", "world_size", "rank0_only"], (
        moved("_get_full_state_dict_context(module, world_size, rank0_only)")
    )
    for method in ("lightning_module_state_dict", "optimizer_state", "load_checkpoint"):
        assert calls(getattr(FSDPStrategy, method), "_get_full_state_dict_context"), moved(
            f"FSDPStrategy.{method}'s _get_full_state_dict_context"
        )


def test_replaced_fsdp_helpers_are_restored():
    import lightning.pytorch.strategies.fsdp as lightning_fsdp

    load, context = lightning_fsdp._lazy_load, lightning_fsdp._get_full_state_dict_context
    with (
        compat.fsdp_reads_full_checkpoints_with(print),
        compat.fsdp_gathers_full_state_with(len),
    ):
        assert lightning_fsdp._lazy_load is print
        assert lightning_fsdp._get_full_state_dict_context is len
    assert lightning_fsdp._lazy_load is load
    assert lightning_fsdp._get_full_state_dict_context is context


def test_fsdp_wrap_hook_leaves_the_wrapping_to_lightning_on_none(monkeypatch):
    """Where ``wrap_model`` returns None (bertpt on a GPU), Lightning wraps the model."""
    from lightning.pytorch.strategies import FSDPStrategy

    monkeypatch.setattr(FSDPStrategy, "_setup_model", lambda self, model: ("lightning", model))

    class Hooked(compat.FSDPWrapHook, FSDPStrategy):
        pass

    model = torch.nn.Linear(1, 1)
    assert Hooked()._setup_model(model) == ("lightning", model)


class StartsAt(Tiny):
    def on_train_start(self) -> None:
        self.first_step = self.global_step


@pytest.fixture
def one_process_group():
    """A gloo process group of one for the test, and afterwards what Lightning leaves behind
    undone: the group, its thread count and its variables (a LOCAL_RANK left in the
    environment would make a later run's DDP wait for processes nobody starts)."""
    environ, threads = dict(os.environ), torch.get_num_threads()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(threads)


def test_fsdp_hooks_run_on_a_cpu_process(tmp_path, monkeypatch, one_process_group):
    """bertpt's FSDPStrategy for real on one CPU process: it wraps the model itself, saves a
    full checkpoint gathered under its own context, and resumes from it through its own
    loader (and the same context, on every rank)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    from bertpt.training import fsdp

    seen: dict[str, list] = {"wrap": [], "load": [], "context": []}

    def record(name: str, owner, attribute: str) -> None:
        function = getattr(owner, attribute)

        def recorded(*args, **kwargs):
            seen[name].append(kwargs.get("rank0_only", True) if name == "context" else args)
            return function(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, recorded)

    record("wrap", fsdp.FSDPStrategy, "wrap_model")
    record("load", fsdp, "load_torch_file")
    record("context", fsdp, "_full_state_dict_context")

    trainer = tiny_trainer(2, strategy=fsdp.FSDPStrategy())
    trainer.fit(Tiny())
    assert isinstance(trainer.strategy.model, FullyShardedDataParallel)
    assert len(seen["wrap"]) == 1 and not seen["load"]
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert seen["context"] == [True, True], seen  # the model's state, the optimizer's
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and "layer.weight" in saved["state_dict"]

    seen["context"].clear()
    resumed, module = tiny_trainer(4, strategy=fsdp.FSDPStrategy()), StartsAt()
    resumed.fit(module, ckpt_path=ckpt)
    assert [Path(*args) for args in seen["load"]] == [ckpt]
    assert seen["context"] == [False], seen  # the optimizer's state, loaded on every rank
    assert module.first_step == 2 and resumed.global_step == 4
