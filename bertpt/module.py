"""LightningModule: losses, metrics, optimizer and schedule around ``bertpt.model``.

The model itself knows nothing of Lightning; this module owns what training adds: the optimizer
and schedule (BERT's recipe, ``bertpt.optim``), metrics, the NaN guard and the random state kept
in checkpoints (so a resumed run continues the uninterrupted one exactly).
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

from bertpt.data_report import format_report
from bertpt.errors import UserError
from bertpt.model import BertConfig, BertForPreTraining
from bertpt.optim import param_groups, warmup_linear_decay

log = logging.getLogger(__name__)


class BertPretrainModule(pl.LightningModule):
    """MLM + NSP pretraining of ``BertForPreTraining`` (held as ``self.model``)."""

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
        self._last_step_time: float | None = None
        self._val_sums: torch.Tensor | None = None
        self.skipped_steps: list[int] = []  # steps whose loss was not finite (on_nan=skip)
        self._rng_to_restore: dict | None = None

    def configure_model(self) -> None:
        """Build the model once the data is prepared: its vocabulary is the tokenizer's."""
        if self.model is not None:
            return
        cfg = self.hparams.model_config
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            cfg["vocab_size"] = datamodule.vocab_size
            # Checkpoints name the run's copy and its content hash (checked on resume/export).
            self.hparams.tokenizer_dir = str(datamodule.own_tokenizer_dir)
            self.hparams.tokenizer_hash = datamodule.tokenizer_hash
        init_from = self.hparams.init_from
        if init_from:
            from bertpt.hf import from_hf

            self.model = from_hf(init_from)
            # A speed setting of this run, not of the weights: config.json does not carry it.
            checkpointing = bool(cfg.get("gradient_checkpointing", False))
            self.model.config.gradient_checkpointing = checkpointing
            self.model.bert.encoder.gradient_checkpointing = checkpointing
            if self.model.config.vocab_size != cfg["vocab_size"]:
                raise UserError(
                    f"model.init_from {init_from} has vocab_size {self.model.config.vocab_size} "
                    f"but the tokenizer has {cfg['vocab_size']} — train with that model's "
                    "tokenizer (drop tokenizer.path)"
                )
            cfg.update(asdict(self.model.config))
        else:
            self.model = BertForPreTraining(BertConfig(**cfg))
        if self.hparams.compile:
            # In place, layer by layer: state_dict keys stay those of transformers.
            for layer in self.model.bert.encoder.layer:
                layer.compile()

    def on_fit_start(self) -> None:
        report = getattr(self.trainer.datamodule, "report", None)
        if report and self.trainer.is_global_zero:
            log.info("data:\n%s", format_report(report))
            for lg in self.trainer.loggers:
                lg.log_hyperparams({"data_report": report})

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    # --- training -----------------------------------------------------------------------------

    def _metrics(self, batch: dict[str, torch.Tensor], out) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        masked = labels[labels != -100]  # (N,) in the row-major order of mlm_predictions
        mlm_correct = (out.mlm_predictions == masked).sum()
        nsp_correct = (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum()
        return {
            "n_masked": torch.tensor(masked.numel(), device=labels.device),
            "mlm_correct": mlm_correct,
            "nsp_correct": nsp_correct,
            "n_seq": torch.tensor(labels.shape[0], device=labels.device),
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        out = self.model(**batch)
        loss = out.loss
        finite = bool(torch.isfinite(loss).all())
        # Every rank must take the same decision, or DDP would hang on a skipped all-reduce.
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self._skip_step(f"loss is {loss.item()} at step {self.global_step} (batch {batch_idx})")
            # logged as it is: otherwise the last finite loss would be logged again at this step
            n = batch["labels"].shape[0]
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
            self.log("train/skipped_steps", float(len(self.skipped_steps)), batch_size=n)
            return None

        m = self._metrics(batch, out)
        n = batch["labels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/mlm_loss", out.mlm_loss, batch_size=n)
        self.log("train/nsp_loss", out.nsp_loss, batch_size=n)
        self.log(
            "train/mlm_acc",
            m["mlm_correct"] / m["n_masked"].clamp(min=1),
            prog_bar=True,
            batch_size=n,
        )
        self.log("train/nsp_acc", m["nsp_correct"] / n, batch_size=n)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n)

        # Throughput over the whole step (data wait included), scaled to all ranks.
        now = time.perf_counter()
        if self._last_step_time is not None:
            dt = now - self._last_step_time
            world = self.trainer.world_size
            self.log("train/seq_per_s", n * world / dt, batch_size=n)
            tokens = batch["attention_mask"].sum() * world
            self.log("train/tok_per_s", tokens.float() / dt, batch_size=n)
        self._last_step_time = now
        return loss

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
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
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
        self.log("train/grad_norm", norm)

    # --- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        # sums of: mlm loss x masked, masked, mlm correct, nsp loss x sequences, nsp correct,
        # sequences
        self._val_sums = torch.zeros(6, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**batch)
        m = self._metrics(batch, out)
        n_seq = m["n_seq"].double()
        self._val_sums += torch.stack(
            [
                out.mlm_loss.double() * m["n_masked"],
                m["n_masked"].double(),
                m["mlm_correct"].double(),
                out.nsp_loss.double() * n_seq,
                m["nsp_correct"].double(),
                n_seq,
            ]
        )

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        mlm_x_n, n_masked, mlm_correct, nsp_x_n, nsp_correct, n_seq = sums.tolist()
        mlm_loss = mlm_x_n / max(n_masked, 1)
        metrics = {
            "val/mlm_loss": mlm_loss,
            "val/mlm_acc": mlm_correct / max(n_masked, 1),
            "val/nsp_loss": nsp_x_n / max(n_seq, 1),
            "val/nsp_acc": nsp_correct / max(n_seq, 1),
            "val/perplexity": math.exp(min(mlm_loss, 50.0)),
        }
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
        # One state per rank (each rank draws its own dropout masks), gathered on every rank:
        # Lightning dumps the checkpoint on all of them and rank 0 writes it.
        state, world = _rng_state(), self.trainer.world_size
        if world == 1:
            checkpoint["rng_states"] = [state]
            return
        # Sent as torch.save bytes: all_gather_object's own unpickler fails on tensors.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, buffer.getvalue())
        checkpoint["rng_states"] = [torch.load(io.BytesIO(b), weights_only=True) for b in gathered]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored after Lightning has finished restoring, at the start of training (see
        # on_train_start): the loaders and the trainer may draw random numbers while restoring.
        self._rng_to_restore = checkpoint.get("rng_states")
        self.skipped_steps = list(checkpoint.get("skipped_steps", []))

    def on_train_start(self) -> None:
        states = self._rng_to_restore
        if not states:
            return
        if isinstance(states, dict):  # an older checkpoint: one state, for one rank
            states = [states]
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


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # as tensors and ints: checkpoints load with torch.load(weights_only=True)
        "numpy": [
            torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in np.random.get_state()
        ],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(
        tuple(x.numpy() if isinstance(x, torch.Tensor) else x for x in state["numpy"])
    )
    random.setstate(state["python"])
