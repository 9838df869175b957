"""A test-only callback: writes a hash of every training sequence this rank saw (unmasked)."""

import hashlib
from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordBatches(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        labels, ids = batch["labels"], batch["input_ids"]
        original = torch.where(labels != -100, labels, ids)  # undo the masking
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"seen_rank{trainer.global_rank}.txt", "a") as f:
            for row, mask in zip(original, batch["attention_mask"], strict=True):
                f.write(hashlib.sha1(row[mask.bool()].numpy().tobytes()).hexdigest() + "\n")
