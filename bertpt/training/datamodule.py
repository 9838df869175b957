"""LightningDataModule: corpus -> tokenizer -> tokenized store (rank 0, once), then loaders.

Each rank reads a disjoint shard of a per-epoch permutation of the pairs. The sampler yields
``(epoch, index)`` keys, so a worker builds pair ``index`` of that epoch and the collator seeds its
masks from it: nothing depends on mutable epoch state copied into worker processes, and the loader
saves its position in checkpoints so a resumed run neither repeats nor skips a sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bertpt.common.errors import UserError
from bertpt.data.collator import MaskingCollator
from bertpt.data.corpus import build_default_corpus, check_corpus, corpus_fingerprint
from bertpt.data.packing import CROSS_DOCUMENTS, PackedSentences
from bertpt.data.pairs import NSPPairDataset
from bertpt.data.stats import check_data, check_store, data_report
from bertpt.data.store import DocumentStore, build_store
from bertpt.data.tokenizer import (
    copy_tokenizer,
    load_tokenizer,
    special_token_ids,
    tokenizer_hash,
    train_tokenizer,
)
from bertpt.training.lightning_compat import batches_this_epoch
from bertpt.training.run_rules import per_device_batch_size

log = logging.getLogger(__name__)


class EpochPairs(Dataset):
    """``pairs[(epoch, i)]``: pair (or packed sequence) ``i`` of ``epoch``, tagged with its epoch
    for the collator."""

    def __init__(self, pairs: NSPPairDataset | PackedSentences) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        if self.pairs.epoch != epoch:
            self.pairs.set_epoch(epoch)
        return {**self.pairs[i], "epoch": epoch}


class EpochCollate:
    """Masks a batch with the epoch its items carry (see :class:`EpochPairs`)."""

    def __init__(self, collator: MaskingCollator) -> None:
        self.collator = collator

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        self.collator.set_epoch(items[0]["epoch"])
        return self.collator(items)


class ShardSampler(Sampler[tuple[int, int]]):
    """This rank's share of a per-epoch permutation, as ``(epoch, index)``, from a start batch.

    Every rank gets ``len // world`` indices (the remainder is dropped, so ranks stay in step).
    With ``shuffle=False`` (validation) it always serves epochs ``0 .. passes-1`` in order, at
    most ``limit`` keys: Lightning calls ``set_epoch`` on validation samplers too, and a
    validation set whose pairs and masks follow the training epoch would not compare across
    steps. Several passes over a small validation set give other pairs and masks each.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        shuffle: bool = True,
        passes: int = 1,
        limit: int | None = None,
    ) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.shuffle, self.passes = seed, shuffle, passes
        self.epoch = 0
        self.start_batch = 0
        total = min(n * passes, limit or n * passes)
        self.per_rank = (n // world) // batch_size * batch_size if shuffle else total // world

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            keys = [(p, i) for p in range(self.passes) for i in range(self.n)]
            return iter(keys[self.rank :: self.world][: self.per_rank])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        mine = order[self.rank :: self.world][: self.per_rank].tolist()
        start, self.start_batch = self.start_batch * self.batch_size, 0
        return ((self.epoch, i) for i in mine[start:])


class ResumableLoader(DataLoader):
    """A DataLoader whose position (epoch, batches consumed) Lightning keeps in checkpoints.

    Lightning calls ``state_dict`` when it saves and ``load_state_dict`` before it iterates again;
    the position comes from the trainer's own count of processed batches, not from the loader's
    iterator (which runs ahead of training by the prefetched batches).
    """

    def __init__(self, *args: Any, progress=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress  # () -> batches processed in the current epoch

    def state_dict(self) -> dict[str, int]:
        done = self._progress() if self._progress else 0
        return {"epoch": self.sampler.epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start_batch = state["batches"]


class PretrainDataModule(pl.LightningDataModule):
    """Builds corpus, tokenizer and tokenized store once (rank 0) and serves NSP + MLM batches,
    or MLM-only batches of packed sentences (``data.objective`` mlm or doc-sentences)."""

    def __init__(
        self,
        data: dict[str, Any],
        tokenizer: dict[str, Any],
        paths: dict[str, Any],
        seed: int = 0,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        self.data, self.tok_cfg, self.paths = dict(data), dict(tokenizer), dict(paths)
        self.seed, self.num_workers, self.pad_to_multiple_of = seed, num_workers, pad_to_multiple_of
        self.train_pairs: NSPPairDataset | PackedSentences | None = None
        self.val_pairs: NSPPairDataset | PackedSentences | None = None
        self.report: dict | None = None
        self.tokenizer_hash: str | None = None  # of the tokenizer the data uses (set in setup)
        self.special_ids: dict[str, int] | None = None  # pad, unk, cls, sep, mask (setup)

    # --- locations (pure functions of the config, so every rank agrees) --------------------

    @property
    def corpus(self):
        c = self.data["corpus"]
        return c if c is not None else Path(self.paths["data_dir"]) / "corpus.txt"

    @property
    def tokenizer_dir(self) -> Path:
        if self.tok_cfg.get("path"):
            return Path(self.tok_cfg["path"])
        case = "uncased" if self.tok_cfg["lowercase"] else "cased"
        fp = corpus_fingerprint(self.corpus, self.data["format"], self.data["text_column"])
        kind, vocab = self.tok_cfg["kind"], self.tok_cfg["vocab_size"]
        name = f"{fp}-{kind}-v{vocab}-{case}-f{self.tok_cfg['min_frequency']}"
        return Path(self.paths["data_dir"]) / "tokenizers" / name

    def _store(self, source) -> DocumentStore:
        return build_store(
            source,
            self.tokenizer_dir,
            self.paths["cache_dir"],
            format=self.data["format"],
            text_column=self.data["text_column"],
            num_proc=self.data["num_proc"],
        )

    # --- Lightning hooks -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Rank 0 (per node): corpus, tokenizer, tokenized store. Each step is cached."""
        if self.data["corpus"] is None:
            build_default_corpus(self.corpus)
        check_corpus(self.corpus, self.data["format"], self.data["text_column"])
        if self.data["val_corpus"] is not None:
            check_corpus(self.data["val_corpus"], self.data["format"], self.data["text_column"])
        tok = self.tokenizer_dir
        # A tokenizer.path was checked with the config (bertpt.training.config_check): only ours is
        # trained.
        if self.tok_cfg.get("path") is None and not (tok / "tokenizer.json").exists():
            train_tokenizer(
                self.corpus,
                tok,
                vocab_size=self.tok_cfg["vocab_size"],
                lowercase=self.tok_cfg["lowercase"],
                min_frequency=self.tok_cfg["min_frequency"],
                format=self.data["format"],
                text_column=self.data["text_column"],
                kind=self.tok_cfg["kind"],
            )
        # Data the tokenizer cannot cover stops the run here, before any logger starts.
        unk_id = special_token_ids(tok)["unk"]
        check_store(self._store(self.corpus), unk_id)
        if self.data["val_corpus"] is not None:
            check_store(self._store(self.data["val_corpus"]), unk_id)

    @property
    def own_tokenizer_dir(self) -> Path:
        """The run's copy of the tokenizer (``RUN/tokenizer``), which checkpoints and exports
        name; the tokenizer itself where there is no run folder."""
        run = self.paths.get("output_dir")
        return Path(run).resolve() / "tokenizer" if run else self.tokenizer_dir

    def _copy_tokenizer_to_run(self) -> None:
        copy = self.own_tokenizer_dir
        if copy == self.tokenizer_dir or (self.trainer and not self.trainer.is_global_zero):
            return
        if (copy / "tokenizer.json").is_file() and tokenizer_hash(copy) == self.tokenizer_hash:
            return
        copy.mkdir(parents=True, exist_ok=True)
        copy_tokenizer(self.tokenizer_dir, copy)

    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs is not None:
            return
        self.tokenizer_hash = tokenizer_hash(self.tokenizer_dir)
        self._copy_tokenizer_to_run()
        d = self.data
        store = self._store(self.corpus)  # a cache hit: prepare_data built it
        if d["val_corpus"] is not None:
            train_store, val_store = store, self._store(d["val_corpus"])
        else:
            train_store, val_store = store.split(d["val_fraction"], seed=self.seed)
        tokenizer = load_tokenizer(self.tokenizer_dir)
        self.special_ids = special_token_ids(tokenizer)
        self.train_pairs = self._sequences(train_store, self.seed)
        self.val_pairs = self._sequences(val_store, self.seed + 1)
        mask_args = dict(
            mlm_probability=d["mlm_probability"],
            mask_mode=d["mask_mode"],
            max_predictions_per_seq=d["max_predictions_per_seq"],
            whole_word_mask=d["whole_word_mask"],
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        self.train_collator = MaskingCollator(tokenizer, seed=self.seed, **mask_args)
        # Validation masks never change, so validation metrics compare across steps and runs.
        self.val_collator = MaskingCollator(tokenizer, seed=self.seed + 1, **mask_args)
        # Measured on every rank (cheap, identical), so all ranks refuse a corpus together.
        self.report = data_report(
            train_store,
            self.train_pairs,
            self.train_collator,
            batch_size=self.per_device_batch_size(),
            num_batches=20,
            unk_id=self.special_ids["unk"],
        )
        check_data(self.report)

    def _sequences(self, store: DocumentStore, seed: int) -> NSPPairDataset | PackedSentences:
        """Next-sentence pairs, or RoBERTa's packed sentences (no pairs, no labels)."""
        d, ids = self.data, self.special_ids
        cls_sep = dict(cls_id=ids["cls"], sep_id=ids["sep"])
        if d["objective"] in CROSS_DOCUMENTS:  # the same sequences every epoch: no seed
            return PackedSentences(store, d["max_seq_length"], d["objective"], **cls_sep)
        return NSPPairDataset(
            store,
            max_seq_length=d["max_seq_length"],
            seed=seed,
            short_seq_prob=d["short_seq_prob"],
            nsp_probability=d["nsp_probability"],
            objective=d["objective"],
            **cls_sep,
        )

    @property
    def vocab_size(self) -> int:
        return load_tokenizer(self.tokenizer_dir).get_vocab_size()

    def per_device_batch_size(self) -> int:
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        accum = trainer.accumulate_grad_batches if trainer else 1
        return per_device_batch_size(self.data["global_batch_size"], world, accum)

    def _loader(
        self,
        pairs: NSPPairDataset | PackedSentences,
        collate,
        shuffle: bool,
        passes: int = 1,
        limit: int | None = None,
        progress=None,
    ) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        batch = self.per_device_batch_size()
        sampler = ShardSampler(len(pairs), batch, rank, world, self.seed, shuffle, passes, limit)
        if len(sampler) == 0:
            raise UserError(
                f"{len(pairs)} pairs cannot fill one batch of {batch} on each of {world} device(s)"
                " — use a larger corpus or a smaller data.global_batch_size"
            )
        return ResumableLoader(
            EpochPairs(pairs),
            batch_size=batch,
            sampler=sampler,
            collate_fn=EpochCollate(collate),
            num_workers=self.num_workers,
            # Own generator: worker seeds never draw from (and shift) the global random state.
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle,
            progress=progress,
        )

    def train_dataloader(self) -> DataLoader:
        def progress() -> int:
            return batches_this_epoch(self.trainer)

        return self._loader(self.train_pairs, self.train_collator, True, progress=progress)

    def val_dataloader(self) -> DataLoader:
        # The same pairs and masks at every check: the first val_max_pairs of epoch 0, or of
        # epochs 0, 1, ... when one epoch has fewer than val_min_pairs.
        limit = self.data.get("val_max_pairs")
        wanted = min(self.data.get("val_min_pairs", 0), limit or math.inf)
        passes = max(1, math.ceil(wanted / len(self.val_pairs)))
        return self._loader(self.val_pairs, self.val_collator, False, passes, limit)
