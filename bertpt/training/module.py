"""LightningModule: losses, metrics, optimizer and schedule around ``bertpt.model.bert``.

The model itself knows nothing of Lightning; this module owns what training adds: the optimizer
and schedule (BERT's recipe, ``bertpt.training.optim``), metrics, the NaN guard and the random state
kept in checkpoints (so a resumed run continues the uninterrupted one exactly).

A training step never waits for the GPU: metrics are summed on the device and read once every
``trainer.log_every_n_steps`` (as averages over those steps), the NaN guard is a device-side flag
read at the same moment, and the unpadded path's token index is built on the host before the
batch is copied (Unpadding). Only ``on_nan=skip`` reads the loss every step: skipping a step is a
decision the host has to take.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.distributed.fsdp import FullyShardedDataParallel

from bertpt.common.errors import UserError
from bertpt.data.stats import format_report
from bertpt.model.bert import SPEED_FIELDS, BertConfig, BertForPreTraining
from bertpt.model.kernels import Unpadding
from bertpt.training.lightning_compat import logs_this_step, optimizer_unscales_in_step
from bertpt.training.optim import param_groups, warmup_linear_decay
from bertpt.training.run_rules import skip_in_one_process

log = logging.getLogger(__name__)


class BertPretrainModule(pl.LightningModule):
    """MLM + NSP pretraining of ``BertForPreTraining`` (held as ``self.model``); MLM only for a
    model without a next-sentence head (RoBERTa), which logs no NSP metrics."""

    def __init__(
        self,
        model_config: dict[str, Any],
        optim: dict[str, Any],
        init_from: str | None = None,
        tokenizer_dir: str | None = None,
        tokenizer_hash: str | None = None,
        on_nan: str = "stop",
        max_skipped_steps: int = 10,
        compile: bool = False,
        fused_optimizer: bool = True,
    ) -> None:
        super().__init__()
        if on_nan not in ("stop", "skip"):
            raise UserError(f"on_nan={on_nan!r} is not an option — use on_nan=stop or on_nan=skip")
        # model_config, tokenizer_dir and tokenizer_hash are what export and resume read back.
        self.save_hyperparameters()
        self.model: BertForPreTraining | None = None
        self.optim = optim
        self._window: _Window | None = None  # training metrics since the last log step
        self._first_step: float | None = None  # when this process's first step started
        self._val_sums: torch.Tensor | None = None
        self._val_counts = [0, 0]  # masked tokens, sequences
        self.skipped_steps: list[int] = []  # steps whose loss was not finite (on_nan=skip)
        self._rng_to_restore: list | None = None

    def configure_model(self) -> None:
        """Build the model once the data is prepared: its vocabulary is the tokenizer's."""
        if self.model is not None:
            return
        cfg = self.hparams.model_config
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer (a model built on its own)
            datamodule = None
        if datamodule is not None:
            cfg["vocab_size"] = datamodule.vocab_size
            # Checkpoints name the run's copy and its content hash (checked on resume/export).
            self.hparams.tokenizer_dir = str(datamodule.own_tokenizer_dir)
            self.hparams.tokenizer_hash = datamodule.tokenizer_hash
        init_from = self.hparams.init_from
        if init_from:
            from bertpt.model.hf import from_hf

            self.model = from_hf(init_from)
            # Speed settings of this run, not of the weights: config.json does not carry them.
            self.model.set_speed(**{k: cfg[k] for k in SPEED_FIELDS if k in cfg})
            if self.model.config.vocab_size != cfg["vocab_size"]:
                raise UserError(
                    f"model.init_from {init_from} has vocab_size {self.model.config.vocab_size} "
                    f"but the tokenizer has {cfg['vocab_size']} — train with that model's "
                    "tokenizer (drop tokenizer.path)"
                )
            cfg.update(asdict(self.model.config))
        else:
            self.model = BertForPreTraining(BertConfig(**cfg))
        ids = getattr(datamodule, "special_ids", None)  # of the run's tokenizer (setup)
        pad = ids["pad"] if ids else None
        if pad is not None and pad != self.model.config.pad_token_id:
            source = f"model.init_from {init_from}" if init_from else "model.pad_token_id"
            raise UserError(
                f"{source} pads with id {self.model.config.pad_token_id} but the tokenizer's "
                f"padding token has id {pad} — use the tokenizer the model was trained with, or "
                f"set model.pad_token_id={pad}"
            )
        if self.hparams.compile:
            # In place, layer by layer: state_dict keys stay those of transformers.
            for layer in self.model.bert.encoder.layer:
                layer.compile()

    def on_fit_start(self) -> None:
        if self.hparams.on_nan == "skip":  # where the config could not count the devices:
            skip_in_one_process(self.trainer.world_size)  # now, not at the first NaN, hours in
        report = getattr(self.trainer.datamodule, "report", None)
        if report and self.trainer.is_global_zero:
            log.info("data:\n%s", format_report(report))
            for lg in self.trainer.loggers:
                lg.log_hyperparams({"data_report": report})

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict:
        """Index the real tokens for the unpadded path here, on the host: on the GPU, finding
        them would make the host wait for the device every step."""
        if self.model is not None and self.model.bert.unpads(self.device):
            unpadding = Unpadding.of(batch["attention_mask"], batch.get("labels"))
            batch["unpadding"] = unpadding.pin_memory() if self.device.type == "cuda" else unpadding
        return batch

    # --- training -----------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._window is None:  # the first step of this process
            self._window = _Window(self.device)
            self._first_step = time.perf_counter()
        self._window.batch_started()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._window.batch_ended()
        if self._first_step is not None:
            if self.hparams.compile:  # the first step compiles: said once
                seconds = time.perf_counter() - self._first_step
                log.info("compiled the encoder layers in the first step: %.1f s", seconds)
            self._first_step = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        out = self.model(**batch)
        self._window.add(batch, out, self.global_step)  # a NaN loss too: it is logged as it is
        if self.hparams.on_nan == "skip":
            finite = bool(torch.isfinite(out.loss).all())
            # Every rank must take the same decision, or DDP would hang on a skipped all-reduce.
            if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
                self._skip_step(f"loss is {out.loss.item()} at step {self.global_step}")
                return None
        return out.loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning writes logged metrics at these steps only: read the sums then, once (and
        # at the last step, for the metrics a run returns).
        last = self.global_step + 1 >= self.trainer.max_steps > 0
        if logs_this_step(self.trainer) or last:
            self._log_window()

    def _log_window(self) -> None:
        window, self._window = self._window, _Window(self.device)
        if not window.steps:
            return
        # Every rank's first non-finite loss: all ranks stop together, or the others would wait
        # for the one that stopped in their next collective.
        first_bad = self.trainer.strategy.all_gather(window.first_bad).view(-1, 2)
        values, first_bad = window.read(first_bad)  # the one device sync of this window
        self._stop_if_not_finite(first_bad)
        world = self.trainer.world_size
        for name, value in values.items():
            if name.endswith("per_s"):  # over the whole window, data wait included, all ranks
                value *= world
            self.log(name, value, prog_bar=name in ("train/loss", "train/mlm_acc"))
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        if self.skipped_steps:
            self.log("train/skipped_steps", float(len(self.skipped_steps)))

    def _stop_if_not_finite(self, first_bad: list[list[float]]) -> None:
        """on_nan=stop: a non-finite loss since the last read stops the run. `first_bad`: the
        (step, loss) of each rank's first one (step -1: none), read at log steps and before a
        checkpoint is saved: never a sync of its own per step."""
        bad = [(step, loss) for step, loss in first_bad if step >= 0]
        if self.hparams.on_nan == "stop" and bad:
            step, loss = min(bad)
            self._skip_step(f"loss is {loss} at step {int(step)}")

    def _skip_step(self, msg: str) -> None:
        """A non-finite loss: stop (on_nan=stop), or skip the step, up to max_skipped_steps."""
        if self.hparams.on_nan == "stop":
            raise UserError(
                f"{msg} — lower optim.lr, check the data, or set on_nan=skip to skip such steps"
            )
        self.skipped_steps.append(self.global_step)
        limit = self.hparams.max_skipped_steps
        if len(self.skipped_steps) > limit:
            shown = ", ".join(map(str, self.skipped_steps[:10]))
            more = ", ..." if len(self.skipped_steps) > 10 else ""
            raise UserError(
                f"the loss was not finite at {len(self.skipped_steps)} steps ({shown}{more}), "
                f"more than max_skipped_steps={limit} — lower optim.lr or check the data"
            )
        log.warning("%s: skipping this step (on_nan=skip)", msg)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by norm or value under every precision, optimizer and strategy; log the
        gradient norm measured before clipping.

        Lightning's own clipping refuses two settings that work: a fused AdamW under mixed
        precision (it assumes the optimizer unscales, though bf16 has no loss scaler) and norm
        clipping under FSDP. So the clipping is done here, with torch's functions.
        """
        root = self.trainer.strategy.model
        params = [p for p in root.parameters() if p.grad is not None]
        if not params:  # the step was skipped (on_nan=skip): nothing to clip or unscale
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and optimizer_unscales_in_step(optimizer):
            # fp16: Lightning leaves a fused optimizer to unscale in its step, after clipping
            # would have seen scaled gradients; unscaled here, the step does not unscale again.
            scaler.unscale_(optimizer)
        clip_norm = gradient_clip_val if gradient_clip_algorithm in (None, "norm") else None
        if isinstance(root, FullyShardedDataParallel):
            # Each rank holds a shard of every gradient: FSDP reduces the norm across ranks.
            norm = root.clip_grad_norm_(clip_norm or math.inf)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if clip_norm:
                torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)
        if gradient_clip_algorithm == "value" and gradient_clip_val:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)  # elementwise: shard-safe
        self._window.grad_norm(norm)

    # --- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        # on the device: mlm loss x masked, mlm correct, nsp loss x sequences, nsp correct
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        self._val_counts = [0, 0]  # on the host: masked tokens, sequences

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**batch)
        n_masked, n_seq = out.mlm_labels.numel(), len(batch["labels"])
        nsp_loss, nsp_correct = _nsp_loss_correct(batch, out)
        self._val_sums += torch.stack(
            [
                out.mlm_loss.double() * n_masked,
                (out.mlm_predictions == out.mlm_labels).sum().double(),
                nsp_loss.double() * n_seq,
                nsp_correct.double(),
            ]
        )
        self._val_counts[0] += n_masked
        self._val_counts[1] += n_seq

    def on_validation_epoch_end(self) -> None:
        counts = torch.tensor(self._val_counts, dtype=torch.float64, device=self.device)
        sums = torch.cat((self._val_sums, counts))
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        mlm_x_n, mlm_correct, nsp_x_n, nsp_correct, n_masked, n_seq = sums.tolist()
        mlm_loss = mlm_x_n / max(n_masked, 1)
        metrics = {
            "val/mlm_loss": mlm_loss,
            "val/mlm_acc": mlm_correct / max(n_masked, 1),
            "val/perplexity": math.exp(min(mlm_loss, 50.0)),
        }
        if self.model.config.nsp_head:  # RoBERTa has none: no NSP metrics
            metrics["val/nsp_loss"] = nsp_x_n / max(n_seq, 1)
            metrics["val/nsp_acc"] = nsp_correct / max(n_seq, 1)
        for name, value in metrics.items():
            # Already summed over the ranks: the same value everywhere, whose mean is itself.
            self.log(name, value, prog_bar=name == "val/mlm_acc", sync_dist=True)

    # --- optimizer ----------------------------------------------------------------------------

    def configure_optimizers(self):
        o = self.optim
        groups = param_groups(self.model.named_parameters(), o["weight_decay"])
        # The fused kernel (one pass over all tensors) where the parameters' device has one.
        fused = self.hparams.fused_optimizer and all(
            p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]
        )
        optimizer = torch.optim.AdamW(
            groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], fused=fused
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_linear_decay(o["warmup_steps"], o["max_steps"])
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- random state in checkpoints (exact resume of dropout and anything else random) --------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = list(self.skipped_steps)
        # One random state per rank (each rank draws its own dropout masks), gathered on every
        # rank: Lightning dumps the checkpoint on all of them and rank 0 writes it. With it, each
        # rank's first non-finite loss since the last log step: never save weights it touched.
        first_bad = [-1.0, 0.0] if self._window is None else self._window.first_bad.tolist()
        state, world = _rng_state(), self.trainer.world_size
        if world == 1:
            gathered = [(state, first_bad)]
        else:
            # Sent as torch.save bytes: all_gather_object's own unpickler fails on tensors.
            buffer = io.BytesIO()
            torch.save(state, buffer)
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, (buffer.getvalue(), first_bad))
            gathered = [(torch.load(io.BytesIO(b), weights_only=True), bad) for b, bad in gathered]
        self._stop_if_not_finite([bad for _, bad in gathered])
        checkpoint["rng_states"] = [state for state, _ in gathered]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored after Lightning has finished restoring, at the start of training (see
        # on_train_start): the loaders and the trainer may draw random numbers while restoring.
        self._rng_to_restore = checkpoint.get("rng_states")
        self.skipped_steps = list(checkpoint.get("skipped_steps", []))

    def on_train_start(self) -> None:
        states = self._rng_to_restore
        if not states:
            return
        world = self.trainer.world_size
        if len(states) != world:
            log.warning(
                "the checkpoint holds the random state of %d rank(s) and this run has %d: "
                "dropout draws differ from the uninterrupted run's",
                len(states),
                world,
            )
        _set_rng_state(states[self.global_rank % len(states)])
        self._rng_to_restore = None


def _nsp_loss_correct(batch: dict[str, torch.Tensor], out) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's NSP loss and correct count; zeros for a model without the head (RoBERTa)."""
    if out.nsp_loss is None:
        zero = out.mlm_loss.detach().new_zeros(())
        return zero, zero
    correct = (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum()
    return out.nsp_loss, correct


class _Window:
    """Training metrics summed on the device over the steps between two log steps, read once.

    Host-side counts (sequences, masked tokens, steps) need no device; the wall time runs from
    the previous read (a sync, so device and host agree there) to this one.
    """

    NAMES = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct", "grad_norm", "tokens")

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(self.NAMES), dtype=torch.float64, device=device)
        # the first step whose loss was not finite (-1: none) and that loss
        self.first_bad = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=device)
        self.steps = self.sequences = self.masked = self.norms = 0
        self.nsp = False  # whether the steps had a next-sentence loss
        self.started = time.perf_counter()
        self.data_wait = 0.0
        self._batch_end: float | None = None

    def batch_started(self) -> None:
        if self._batch_end is not None:  # the loop was fetching the batch since then
            self.data_wait += time.perf_counter() - self._batch_end

    def batch_ended(self) -> None:
        self._batch_end = time.perf_counter()

    def add(self, batch: dict[str, torch.Tensor], out, step: int) -> None:
        nsp_loss, nsp_correct = _nsp_loss_correct(batch, out)
        self.nsp = out.nsp_loss is not None
        values = (
            out.loss,
            out.mlm_loss,
            nsp_loss,
            (out.mlm_predictions == out.mlm_labels).sum(),
            nsp_correct,
        )
        tokens = batch["attention_mask"].sum()
        self.sums[:5] += torch.stack([v.detach().double() for v in values])
        self.sums[6] += tokens
        loss = out.loss.detach().double()
        first = ~torch.isfinite(loss) & (self.first_bad[0] < 0)
        # python scalars go into the kernel as arguments: no copy to the device, no sync
        at_step = torch.where(first, float(step), self.first_bad[0])
        self.first_bad = torch.stack([at_step, torch.where(first, loss, self.first_bad[1])])
        self.steps += 1
        self.sequences += len(batch["labels"])
        self.masked += out.mlm_labels.numel()

    def grad_norm(self, norm: torch.Tensor) -> None:
        self.sums[5] += norm.detach().double()
        self.norms += 1

    def read(self, first_bad: torch.Tensor) -> tuple[dict[str, float], list[list[float]]]:
        """The averages over the window, and `first_bad` (ranks x 2, on the device) read with
        them."""
        values = torch.cat((self.sums, first_bad.flatten().double())).tolist()
        sums = dict(zip(self.NAMES, values[: len(self.NAMES)], strict=True))
        bad = values[len(self.NAMES) :]
        seconds = time.perf_counter() - self.started
        nsp = {  # none for a model without the head (RoBERTa)
            "train/nsp_loss": sums["nsp_loss"] / self.steps,
            "train/nsp_acc": sums["nsp_correct"] / self.sequences,
        }
        return {
            "train/loss": sums["loss"] / self.steps,
            "train/mlm_loss": sums["mlm_loss"] / self.steps,
            "train/mlm_acc": sums["mlm_correct"] / max(self.masked, 1),
            **(nsp if self.nsp else {}),
            **({"train/grad_norm": sums["grad_norm"] / self.norms} if self.norms else {}),
            "train/seq_per_s": self.sequences / seconds,
            "train/tok_per_s": sums["tokens"] / seconds,
            # the share of the window's wall time the loop spent waiting for batches
            "train/data_wait": self.data_wait / seconds,
        }, [bad[i : i + 2] for i in range(0, len(bad), 2)]


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        # this process's own device: a resume may see fewer GPUs than the run that saved it
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        # as tensors and ints: checkpoints load with torch.load(weights_only=True)
        "numpy": [
            torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in np.random.get_state()
        ],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available():  # checkpoints before Dec 2026 hold every device's
        own = cuda[0] if len(cuda) == 1 else cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(own)
    np.random.set_state(
        tuple(x.numpy() if isinstance(x, torch.Tensor) else x for x in state["numpy"])
    )
    random.setstate(state["python"])
