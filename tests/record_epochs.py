"""A test-only callback: what a run trained and validated on, batch by batch, and in which
training epoch (tests/test_train.py, epochs of a tiny corpus)."""

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl

# What makes a batch: its pairs (inputs, segments, padding), its masks and its labels.
KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label")


def digest(batch: dict) -> str:
    h = hashlib.sha1()
    for key in KEYS:
        h.update(batch[key].cpu().numpy().tobytes())
    return h.hexdigest()


class RecordEpochs(pl.Callback):
    """Appends a line per batch to ``OUT_DIR/batches.jsonl``: stage (train or val), the training
    epoch, the validation's number (val), and a hash of the batch."""

    def __init__(self, out_dir: str) -> None:
        self.out = Path(out_dir) / "batches.jsonl"
        self.validations = 0

    def _write(self, trainer: pl.Trainer, stage: str, batch: dict, **extra) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "epoch": trainer.current_epoch, **extra, "batch": digest(batch)}
        with open(self.out, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._write(trainer, "train", batch)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validations += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._write(trainer, "val", batch, validation=self.validations)
