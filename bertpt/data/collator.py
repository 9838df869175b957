"""Dynamic masking collator: pads a batch of pairs and masks it afresh, reproducibly.

Selection follows either Hugging Face (``mask_mode="independent"``: every candidate token is
selected with probability ``mlm_probability``) or Google (``"exact"``: ``round(n * p)`` tokens per
sequence, at least 1, at most ``max_predictions_per_seq``, where ``n`` counts the candidates).
Candidates are the non-special tokens: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (RoBERTa's ``<pad>
<unk> <s> </s> <mask>``, and any other special token of the tokenizer) are never selected, as in
HF. Of the selected tokens 80 % become ``[MASK]``, 10 % a random *non-special* token and 10 % stay
unchanged. Items with ``token_type_ids`` (pairs) give a batch with them; items without (RoBERTa's
packed sentences) give a batch without.

Whole-word masking treats a word (a piece and the ``##`` pieces that follow it) as one unit; in
exact mode words are taken in random order, each one that still fits the budget (as Google).

Reproducibility: the generator of a batch is seeded from ``(seed, epoch, rank, item indices)``, so
the same batch gets the same masks whatever the worker count, and a resumed run gets the same
masks. Items without ``index`` fall back to ``(seed, epoch, rank, worker id, batch counter)``.
All work is vectorised numpy over the (B, T) batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from bertpt.common.errors import UserError
from bertpt.data.tokenizer import resolve_tokenizer, special_token_ids

_MASK_TAG = 0x3A5C  # domain-separates the masking stream from the pair planner's


class MaskingCollator:
    """``collate_fn`` for :class:`bertpt.data.pairs.NSPPairDataset` items (or any dicts with
    ``input_ids`` and optionally ``token_type_ids``, ``next_sentence_label``, ``index``)."""

    def __init__(
        self,
        tokenizer=None,
        *,
        mlm_probability: float = 0.15,
        seed: int = 0,
        mask_mode: str = "independent",
        max_predictions_per_seq: int = 20,
        whole_word_mask: bool = False,
        pad_to_multiple_of: int | None = None,
        rank: int = 0,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        vocab_size: int | None = None,
        pad_id: int = 0,
        mask_id: int = 4,
        special_ids: Sequence[int] = (0, 1, 2, 3, 4),
        continuation_ids: Sequence[int] = (),
    ) -> None:
        if mask_mode not in ("independent", "exact"):
            raise ValueError(f"mask_mode must be 'independent' or 'exact', not {mask_mode!r}")
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability ({mlm_probability}) must be in (0, 1)")
        if mask_replace_prob + random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must not exceed 1")
        if tokenizer is not None:
            tok = resolve_tokenizer(tokenizer)
            vocab = tok.get_vocab()
            vocab_size = tok.get_vocab_size()
            roles = special_token_ids(tok)
            pad_id, mask_id = roles["pad"], roles["mask"]
            added = tok.get_added_tokens_decoder()
            special_ids = sorted({i for i, t in added.items() if t.special} | set(roles.values()))
            continuation_ids = [i for t, i in vocab.items() if t.startswith("##")]
        if vocab_size is None:
            raise ValueError("give a tokenizer, or vocab_size with the special ids")
        if whole_word_mask and not len(continuation_ids):
            raise UserError(
                "data.whole_word_mask=true needs WordPiece's ## continuation pieces, and this "
                "tokenizer has none (byte-level BPE marks word starts instead) — set "
                "data.whole_word_mask=false"
            )
        self.vocab_size, self.pad_id, self.mask_id = vocab_size, pad_id, mask_id
        self.mlm_probability, self.mask_mode, self.seed, self.rank = (
            mlm_probability,
            mask_mode,
            seed,
            rank,
        )
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word_mask, self.pad_to_multiple_of = whole_word_mask, pad_to_multiple_of
        self.mask_replace_prob, self.random_replace_prob = mask_replace_prob, random_replace_prob
        # Lookup tables over the vocabulary: one gather classifies a whole (B, T) batch.
        self.special_lut = np.zeros(vocab_size, dtype=bool)
        self.special_lut[[*special_ids, pad_id, mask_id]] = True
        self.continuation_lut = np.zeros(vocab_size, dtype=bool)
        self.continuation_lut[list(continuation_ids)] = True
        self.continuation_lut &= ~self.special_lut
        self.replacement_ids = np.flatnonzero(~self.special_lut)
        self.epoch = 0
        self._batches = 0  # fallback seed component for items without ``index``

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, items: Sequence[dict]) -> np.random.Generator:
        if all("index" in x for x in items):
            key = np.fromiter((x["index"] for x in items), dtype=np.int64, count=len(items))
            parts = [self.seed, self.epoch, self.rank, _MASK_TAG]
        else:
            info = torch.utils.data.get_worker_info()
            key = np.array([info.id if info else 0, self._batches], dtype=np.int64)
            parts = [self.seed, self.epoch, self.rank, _MASK_TAG + 1]
            self._batches += 1
        digest = hashlib.blake2b(key.tobytes(), digest_size=16).digest()
        return np.random.default_rng([*parts, int.from_bytes(digest, "little")])

    def _pad(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        T = int(lengths.max())
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        valid = np.arange(T) < lengths[:, None]  # (B, T); row-major, so it matches concatenate
        return valid, np.concatenate(seqs)

    def _select(self, rng, ids: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """(B, T) bool of the positions to predict."""
        B, T = ids.shape
        p = self.mlm_probability
        if self.whole_word_mask:
            # Word id per token: a candidate ## piece joins the word before it.
            starts = ~(self.continuation_lut[ids] & cand)
            starts[:, 0] = True  # a row never starts inside a word
            # (B, T) flat index of each token's word in a (B, T) table of words
            wid = (
                np.cumsum(starts, axis=1, dtype=np.int32)
                + np.arange(-1, B * T - 1, T, dtype=np.int32)[:, None]
            )
        if self.mask_mode == "independent":
            draw = rng.random((B, T), dtype=np.float32) < p
            return cand & (draw.ravel()[wid] if self.whole_word_mask else draw)
        # exact: a budget of k tokens per row, filled by words in random order. Sort keys are
        # uint32 (random high bits, word id low bits): np.sort on them is several times faster
        # than argsort, and the low bits give back the word after sorting.
        n = np.count_nonzero(cand, axis=1)
        k = np.minimum(self.max_predictions_per_seq, np.maximum(1, np.rint(n * p))).astype(np.int64)
        k *= n > 0
        bits = max(1, int(T - 1).bit_length())
        if self.whole_word_mask:
            word_len = np.bincount(wid[cand], minlength=B * T).reshape(B, T)  # candidates/word
            is_word = word_len > 0
        else:
            is_word = cand
        raw = rng.bit_generator.random_raw((B, T)).astype(np.uint32) >> np.uint32(bits + 1)
        keys = (raw | (~is_word).astype(np.uint32) << np.uint32(31 - bits)) << np.uint32(bits)
        keys |= np.arange(T, dtype=np.uint32)  # (B, T); non-words sort after every word
        if not self.whole_word_mask:  # the k smallest keys of each row
            kth = np.sort(keys, axis=1)[np.arange(B), np.maximum(k, 1) - 1]
            return cand & (keys <= kth[:, None]) & (k > 0)[:, None]
        order = np.sort(keys, axis=1) & np.uint32((1 << bits) - 1)  # word ids, random order
        # Only the first W words in random order can be needed: every word taken uses budget and
        # a skip needs a word longer than the room left, so reaching past W would take ~2k skips.
        W = min(T, 3 * self.max_predictions_per_seq + 8)
        order = order[:, :W].view(np.int32) + np.arange(0, B * T, T, dtype=np.int32)[:, None]
        sorted_len = word_len.ravel()[order].astype(np.int32)  # (B, W) in random word order
        take = np.zeros((B, W), dtype=bool)
        room = k.astype(np.int32)
        # Google walks the words in random order and takes each one that still fits. Each pass
        # here takes the longest prefix of the words that fit the room left; a word that did not
        # fit never fits later (the room only shrinks), so the passes reach Google's selection.
        while True:
            fits = ~take & (sorted_len > 0) & (sorted_len <= room[:, None])
            new = fits & (np.cumsum(sorted_len * fits, 1, dtype=np.int32) <= room[:, None])
            if not new.any():
                break
            take |= new
            room -= (sorted_len * new).sum(1, dtype=np.int32)
        chosen = np.zeros(B * T, dtype=bool)
        chosen[order[take]] = True
        return cand & chosen[wid]

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        rng = self._rng(items)
        valid, flat_ids = self._pad([np.asarray(x["input_ids"]) for x in items])
        ids = np.full(valid.shape, self.pad_id, dtype=np.int64)  # (B, T)
        ids[valid] = flat_ids
        if flat_ids.size and (flat_ids.max() >= self.vocab_size or flat_ids.min() < 0):
            raise ValueError(
                f"token id {flat_ids.max()} outside the collator's vocabulary of {self.vocab_size}:"
                " build the collator with the tokenizer that tokenized the data"
            )
        cand = valid & ~self.special_lut[ids]
        sel = np.flatnonzero(self._select(rng, ids, cand))  # flat positions to predict
        flat = ids.reshape(-1)  # views: fancy assignment through them, not through .flat
        labels = np.full_like(ids, -100)
        labels.reshape(-1)[sel] = flat[sel]
        u = rng.random(sel.size, dtype=np.float32)
        masked = u < self.mask_replace_prob
        randomised = ~masked & (u < self.mask_replace_prob + self.random_replace_prob)
        flat[sel[masked]] = self.mask_id
        n_rand = int(randomised.sum())
        flat[sel[randomised]] = self.replacement_ids[
            rng.integers(0, self.replacement_ids.size, n_rand)
        ]
        batch = {"input_ids": torch.from_numpy(ids)}
        if "token_type_ids" in items[0]:
            types = np.zeros_like(ids)
            types[valid] = np.concatenate([np.asarray(x["token_type_ids"]) for x in items])
            batch["token_type_ids"] = torch.from_numpy(types)
        batch["attention_mask"] = torch.from_numpy(valid.astype(np.int64))
        batch["labels"] = torch.from_numpy(labels)
        if "next_sentence_label" in items[0]:
            nsl = (x["next_sentence_label"] for x in items)
            nsl = np.fromiter(nsl, dtype=np.int64, count=len(items))
            batch["next_sentence_label"] = torch.from_numpy(nsl)
        return batch
