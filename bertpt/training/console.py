"""What a run shows on the console: one progress bar over the whole run, and none of our
dependencies' tips and notices that say nothing about the run.

The filters name each notice by its text and origin, so any other warning still shows.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from bertpt.training.lightning_compat import logs_this_step

# (message regex, why it says nothing to a bertpt user)
IGNORED_WARNINGS = (
    # Lightning's own code calls a torch helper that torch has deprecated.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # A resume writes into its own checkpoint folder by design; a fresh run never writes into
    # a used folder (bertpt.runs.folder refuses it).
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    # on_nan=skip returns None on purpose, and bertpt logs the skipped step itself.
    (r"`training_step` returned `None`", UserWarning),
    # bertpt's module indexes the real tokens (unpadded path) before a batch is copied to the
    # GPU, in Lightning's hook for that; the datamodule leaves that hook to it on purpose.
    (r"You have overridden `on_before_batch_transfer` in `LightningModule`", UserWarning),
    # torch's CPU fallback for unpadded attention (model.unpad=true on a CPU) converts the
    # jagged tensors it is given to its older nested layout, and says so on every call.
    (r"The PyTorch API of nested tensors is in prototype stage", UserWarning),
)


# Logged metric -> its name on the progress bar.
SHOWN = {
    "train/loss": "loss",
    "train/mlm_acc": "mlm_acc",
    "train/seq_per_s": "seq/s",
    "val/mlm_acc": "val_mlm_acc",
}


class _NoTips(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger ("💡 Tip: ... litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


class ConsoleFormatter(logging.Formatter):
    """The console's log lines (conf/hydra/default.yaml): a message as it is, a warning or
    error with its level in front; train.log keeps times and logger names."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


def quiet_dependencies() -> None:
    """Install the filters (idempotent)."""
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTips())
    # torch's nested tensors (the unpadded path) call a tracing check that warns, once per
    # process, about an API of torch's own: nothing a user can act on.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    # `import lightning` gives its logger a console handler of its own, and the messages also
    # reach the root logger's: where Hydra has set those up, each would print twice.
    if logging.getLogger().handlers:
        lightning = logging.getLogger("lightning")
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)


class RunProgressBar(TQDMProgressBar):
    """One bar for the whole run: optimizer steps out of ``max_steps`` (not batches per epoch),
    with the training loss, masked-token accuracy, sequences per second and, once validated,
    the validation accuracy. Validation itself runs without a bar of its own."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        shown = {}
        for key, name in SHOWN.items():
            value = trainer.callback_metrics.get(key)
            if value is not None:
                shown[name] = f"{float(value):.0f}" if key.endswith("per_s") else f"{value:.3g}"
        return shown

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.train_progress_bar = Tqdm(
            desc="train",
            total=trainer.max_steps,
            initial=trainer.global_step,  # a resume starts where it was
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        pass  # one bar for the run, not one per epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, self.train_progress_bar.total
        if self.is_enabled and (step % self.refresh_rate == 0 or step == total):
            self.train_progress_bar.n = step
            # Metrics are read where Lightning logs them: reading them at other steps would make
            # the host wait for the GPU (bertpt.training.module sums them on the device in between).
            if logs_this_step(trainer):
                self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
            else:
                self.train_progress_bar.refresh()

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)
