"""Downstream quality during training: the frozen-feature probe at every validation.

``callbacks=probe`` (the CPU experiments' choice) adds ``ValidationProbe``: when a validation
ends, rank 0 encodes a labelled task with the encoder as it is at that step (mean-pooled token
states, the linear probe's features), fits a classifier on the training split and logs its test
accuracy as ``val/probe_acc``; at step 0 it probes the weights the run starts from (random init
for a fresh run). The loss says the model predicts masked tokens better; this says whether its
features start to carry what a downstream task needs. The classifier is a ridge regression
whose regularisation leave-one-out cross-validation picks in closed form (0.1 s) rather than
the 15 s logistic regression of ``python -m bertpt.probe --mode linear``. The encoder's forward
is the cost: with the first 12 tokens of each text and half the training split, padded once, a
probe adds about 11% to tiny's validations and 13% to mini's (conf/callbacks/probe.yaml has the
measurements).

Off: ``callbacks=default`` or ``callbacks.val_probe=null``. Without scikit-learn, or under FSDP
(whose shards only all ranks together can run), the run says so once and goes on without it.
"""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl
from lightning.pytorch.strategies import FSDPStrategy

from bertpt.probing.linear import (
    Batches,
    encode_batches,
    have_sklearn,
    padded_batches,
    ridge_accuracy,
)
from bertpt.probing.tasks import BUILTIN, Encoded, encode, load_task, load_tokenizer

log = logging.getLogger(__name__)


# Tokens of each text the probe encodes, and training examples it fits on (every k-th, so the
# classes stay even): conf/callbacks/probe.yaml says why 12 and 768.
MAX_LENGTH = 12
MAX_TRAIN_EXAMPLES = 768
# Texts per forward: the split is padded once, in batches this size. 12-token texts make small
# matrices, so fewer, larger calls are faster: a tiny encoder's probe 0.10 s against 0.26 s when
# padded afresh in batches of 64 (0.35 s against 0.56 s for mini).
BATCH_SIZE = 256


class ValidationProbe(pl.Callback):
    def __init__(
        self,
        task: str = BUILTIN,
        max_length: int = MAX_LENGTH,
        pooling: str = "mean",
        max_train_examples: int | None = MAX_TRAIN_EXAMPLES,
    ) -> None:
        self.task_name = task
        self.max_length = max_length
        self.pooling = pooling
        self.max_train_examples = max_train_examples
        self.data: tuple[Encoded, Encoded] | None = None  # train, test
        self.batches: tuple[Batches, ...] = ()  # the same, padded once
        self.off = False
        self.seconds: list[float] = []  # the time each probe took, for the log
        self.val_seconds: list[float] = []  # the time each validation took before its probe
        self._val_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        reason = None
        if not have_sklearn():
            reason = "scikit-learn is not installed (pip install -e '.[probe]')"
        elif isinstance(trainer.strategy, FSDPStrategy):
            reason = "under FSDP no rank holds the whole encoder"
        if reason:
            log.warning("val/probe_acc is not measured: %s", reason)
            self.off = True
            return
        task = load_task(self.task_name)
        tokenizer = load_tokenizer(trainer.datamodule.own_tokenizer_dir, self.max_length)
        train, test = encode(tokenizer, task.train), encode(tokenizer, task.test)
        if self.max_train_examples and len(train.ids) > self.max_train_examples:
            step = len(train.ids) / self.max_train_examples  # every k-th: the classes stay even
            train = train.subset([int(i * step) for i in range(self.max_train_examples)])
        pad = pl_module.model.config.pad_token_id
        self.data = (train, test)
        self.batches = tuple(
            padded_batches(x.ids, x.type_ids, pad, BATCH_SIZE).to(pl_module.device)
            for x in self.data
        )
        log.info(
            "val/probe_acc: the linear probe on %s (%d classes, %d train / %d test) at every "
            "validation",
            task.name,
            len(task.label_names),
            len(train.ids),
            len(test.ids),
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The probe on the weights the run starts from, logged at step 0: for a fresh run, the
        random-init baseline the curve is to beat."""
        if trainer.global_step == 0 and not self.off and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"val/probe_acc": self._probe(trainer, pl_module)}, step=0)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds:
            log.info("val/probe_acc: %s", self.cost())

    def cost(self) -> str:
        """How long the probes took, and how much they add to the validations they follow."""
        mean = sum(self.seconds) / len(self.seconds)
        text = f"{len(self.seconds)} probes, {mean:.2f} s each on average"
        if self.val_seconds:
            # the step-0 probe follows no validation: the share is of the ones that did
            probes = self.seconds[-len(self.val_seconds) :]
            share = sum(probes) / max(sum(self.val_seconds), 1e-9)
            text += f", adding {share:.0%} to the validations' time"
        return text

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.off or not trainer.is_global_zero:
            return
        self.val_seconds.append(time.perf_counter() - self._val_start)
        pl_module.log("val/probe_acc", self._probe(trainer, pl_module), rank_zero_only=True)

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        start = time.perf_counter()
        bert = pl_module.model.bert
        # In the run's precision (bf16 autocast under bf16-mixed), as its validation steps run.
        with trainer.precision_plugin.forward_context():
            train_x, test_x = (encode_batches(bert, b, self.pooling) for b in self.batches)
        train, test = self.data
        acc = ridge_accuracy(train_x, train.labels, test_x, test.labels)
        self.seconds.append(time.perf_counter() - start)
        log.debug("val/probe_acc %.4f in %.1f s", acc, self.seconds[-1])
        return acc
