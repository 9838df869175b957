"""Next-sentence (NSP) or sentence-order (SOP) pairs, index-addressable per epoch.

Pair ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: every worker, rank or resumed run
computes the same vectorised *plan* of the epoch from ``(seed, e)`` (token ranges of A and B, the
label) and ``__getitem__`` only slices the memory-mapped store. The plan follows Google's
``create_pretraining_data.py`` (target length ``max_seq_length - 3``, shortened to
``randint(2, target)`` with ``short_seq_prob``; consecutive sentences filled up to the target; a
random split into A and B; a random B with the unused sentences put back; the longer side
truncated one token at a time from a random end) with these differences:

- The label is drawn first, so the share of random-next pairs is ``nsp_probability`` in
  expectation. Google forces a one-sentence chunk to be random-next, which pushes the share
  above one half; here a one-sentence chunk that must be a positive is split inside the sentence
  at a random token (A = its head, B = its tail).
- A random B always comes from *another* document (uniform over the other documents; Google
  retries 10 times and may fall back to the same one). A one-document corpus is a ValueError.
- The short target is drawn per pair (per chunk), as in Google, and pairs are drawn anew every
  epoch (Google fixes them at ``dupe_factor`` copies when the data is written).
- Truncation uses the closed form of Google's loop (trim the longer side, ties trim B) and a
  binomial count of front trims, which is what the per-token coin flips add up to.
- A chunk of fewer than two tokens (a one-token last sentence) is dropped: it cannot form a
  pair. This is independent of the label, so it does not bias the share of random pairs.
- ``len`` is fixed at epoch 0's number of pairs so samplers (``DistributedSampler``) see a
  constant length; a later epoch drops or repeats the few pairs (~0.1 %) by which it differs.
- ``objective="sop"`` (ALBERT): no random B; with probability ``nsp_probability`` A and B are
  swapped and labelled 1.
"""

from __future__ import annotations

import os

import numpy as np
from torch.utils.data import Dataset

from bertpt.common.errors import UserError
from bertpt.data.store import DocumentStore, store_for

_PLAN_TAG = 0x9A125  # domain-separates the planner's random stream from other users of the seed


def _draw_b(rng, C, starts, counts, doc, target_b):
    """A random span of another document (uniform) filled up to ``target_b`` tokens."""
    n, D = doc.size, starts.size
    other = rng.integers(0, D - 1, n)
    other += other >= doc  # uniform over the D-1 other documents
    j = starts[other] + (rng.random(n) * counts[other]).astype(np.int64)
    e = np.searchsorted(C, C[j] + target_b, side="left")
    e = np.clip(e, j + 1, starts[other] + counts[other])
    return other, C[j], C[e]


def _truncate(la: np.ndarray, lb: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Google's truncate_seq_pair in closed form: the kept lengths of A and B.

    Trimming the longer side one token at a time (ties trim B) keeps a side whole when the other
    side absorbs the excess, and otherwise meets at ceil(M/2) for A and floor(M/2) for B.
    """
    keep_a = np.minimum(la, np.maximum(max_tokens - lb, (max_tokens + 1) // 2))
    keep_b = np.minimum(lb, max_tokens - keep_a)
    return keep_a, keep_b


def plan_epoch(
    store: DocumentStore,
    max_seq_length: int,
    seed: int,
    epoch: int,
    short_seq_prob: float = 0.1,
    nsp_probability: float = 0.5,
    objective: str = "nsp",
) -> dict[str, np.ndarray]:
    """All pairs of one epoch as flat arrays of length P (the pair count of this epoch).

    Keys: ``a_lo, b_lo`` (int64 virtual token starts), ``a_len, b_len`` (int32, after
    truncation), ``a_doc, b_doc`` (int32 document of the view), ``label`` (int8) and
    ``truncated`` (bool).
    """
    max_tokens = max_seq_length - 3
    C = store.token_offsets  # (S+1,) virtual token start of every sentence
    starts, counts = store.doc_starts, store.doc_counts  # (D,)
    ends = starts + counts
    D = len(store)
    random_b = objective == "nsp" and nsp_probability > 0
    if random_b and D < 2:
        raise UserError(f"a random next sentence needs >= 2 documents, the store has {D}")
    rng = np.random.default_rng([seed, epoch, _PLAN_TAG])
    ptr = starts.copy()
    active = np.arange(D)
    parts: list[dict[str, np.ndarray]] = []
    # One iteration takes the next chunk of every document that still has sentences, so the loop
    # runs (max chunks per document) times and every step is vectorised over documents.
    while active.size:
        p, end, n = ptr[active], ends[active], active.size
        target = np.where(
            rng.random(n) < short_seq_prob, rng.integers(2, max_tokens + 1, n), max_tokens
        )
        e = np.clip(np.searchsorted(C, C[p] + target, side="left"), p + 1, end)  # chunk [p, e)
        flip = rng.random(n) < nsp_probability  # random B (nsp) or swapped order (sop)
        u_split = rng.random(n)
        multi = e - p >= 2
        a = p + 1 + (u_split * (e - p - 1)).astype(np.int64)  # A = [p, a), a in [p+1, e-1]
        n_tok = C[p + 1] - C[p]
        cut = C[p] + 1 + (u_split * (n_tok - 1)).astype(np.int64)  # inside a lone sentence
        a_lo = C[p]
        a_hi = np.where(multi, C[np.minimum(a, e)], np.where(flip & random_b, C[p + 1], cut))
        b_lo, b_hi = np.where(multi, C[np.minimum(a, e)], cut), C[e]
        b_doc = active.copy()
        if random_b and flip.any():
            rb = np.flatnonzero(flip)
            target_b = np.maximum(target[rb] - (a_hi[rb] - a_lo[rb]), 1)
            b_doc[rb], b_lo[rb], b_hi[rb] = _draw_b(rng, C, starts, counts, active[rb], target_b)
        ok = multi | (n_tok >= 2)  # a one-token chunk cannot form a pair
        la, lb = (a_hi - a_lo)[ok], (b_hi - b_lo)[ok]
        keep_a, keep_b = _truncate(la, lb, max_tokens)
        # Each trimmed token comes off the front or the back with probability 1/2 (Google).
        front_a = rng.binomial(la - keep_a, 0.5)
        front_b = rng.binomial(lb - keep_b, 0.5)
        part = {
            "a_lo": a_lo[ok] + front_a,
            "b_lo": b_lo[ok] + front_b,
            "a_len": keep_a.astype(np.int32),
            "b_len": keep_b.astype(np.int32),
            "a_doc": active[ok].astype(np.int32),
            "b_doc": b_doc[ok].astype(np.int32),
            "label": flip[ok].astype(np.int8),
            "truncated": (la + lb) > max_tokens,
            "chunk": p[ok],
        }
        if objective == "sop":  # swap A and B of the flipped pairs
            s = flip[ok]
            part["a_lo"][s], part["b_lo"][s] = part["b_lo"][s], part["a_lo"][s].copy()
            part["a_len"][s], part["b_len"][s] = part["b_len"][s], part["a_len"][s].copy()
        parts.append(part)
        # A random B leaves the chunk's unused sentences [a, e) for the next chunk (put back).
        ptr[active] = np.where(multi & flip & random_b, a, e)
        active = active[ptr[active] < end]
    plan = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]} if parts else {}
    if not plan or plan["label"].size == 0:
        return {}
    order = np.argsort(plan.pop("chunk"), kind="stable")  # corpus order
    return {k: v[order] for k, v in plan.items()}


def _resize(plan: dict[str, np.ndarray], n: int, rng) -> dict[str, np.ndarray]:
    """Drop or repeat random pairs so the plan has exactly ``n`` pairs (order kept)."""
    p = plan["label"].size
    if p == n:
        return plan
    if p > n:
        keep = np.ones(p, bool)
        keep[rng.choice(p, p - n, replace=False)] = False
        idx = np.flatnonzero(keep)
    else:
        idx = np.sort(np.concatenate([np.arange(p), rng.integers(0, p, n - p)]))
    return {k: v[idx] for k, v in plan.items()}


class NSPPairDataset(Dataset):
    """``[CLS] A [SEP] B [SEP]`` pairs of a :class:`DocumentStore`, re-drawn every epoch."""

    def __init__(
        self,
        store: DocumentStore,
        max_seq_length: int = 128,
        seed: int = 0,
        short_seq_prob: float = 0.1,
        nsp_probability: float = 0.5,
        objective: str = "nsp",
        cls_id: int = 2,
        sep_id: int = 3,
    ) -> None:
        if objective not in ("nsp", "sop"):
            raise UserError(f"objective must be 'nsp' or 'sop', not {objective!r}")
        if max_seq_length < 5:
            raise UserError(
                f"max_seq_length ({max_seq_length}) must be at least 5: [CLS] A [SEP] B [SEP]"
            )
        if not 0 <= nsp_probability <= 1 or not 0 <= short_seq_prob <= 1:
            raise UserError(
                f"nsp_probability ({nsp_probability}) and short_seq_prob ({short_seq_prob}) "
                "must be in [0, 1]"
            )
        if len(store) == 0:
            raise UserError("the document store is empty: the corpus yields no tokens")
        if objective == "nsp" and nsp_probability > 0 and len(store) < 2:
            raise UserError(
                f"next-sentence prediction needs at least 2 documents, the corpus has {len(store)}:"
                " separate documents with a blank line (BERT format) or use objective='sop'"
            )
        self.store, self.max_seq_length, self.seed = store, max_seq_length, seed
        self.short_seq_prob, self.nsp_probability, self.objective = (
            short_seq_prob,
            nsp_probability,
            objective,
        )
        self.cls_id, self.sep_id = cls_id, sep_id
        self.epoch = 0
        self._plan = self._raw_plan(0)
        self._plan_epoch = 0
        self._len = self._plan["label"].size if self._plan else 0
        if self._len == 0:
            raise UserError("no usable pair: every document holds fewer than two tokens")

    @classmethod
    def from_files(
        cls,
        files,
        tokenizer,
        max_seq_length: int = 128,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        *,
        format: str = "auto",
        text_column: str = "text",
        num_proc: int = 1,
        **kwargs,
    ) -> NSPPairDataset:
        """Tokenize (and cache) ``files`` with ``tokenizer`` (a folder, tokenizer.json or a
        loaded ``tokenizers.Tokenizer`` / fast ``transformers`` tokenizer) and pair them."""
        from bertpt.data.tokenizer import special_token_ids

        store = store_for(
            files, tokenizer, cache_dir, format=format, text_column=text_column, num_proc=num_proc
        )
        roles = special_token_ids(tokenizer)
        ids = {"cls_id": roles["cls"], "sep_id": roles["sep"]}
        return cls(store, max_seq_length, seed, **{**ids, **kwargs})

    # --- epochs and plans ---------------------------------------------------------------------

    def _raw_plan(self, epoch: int) -> dict[str, np.ndarray]:
        return plan_epoch(
            self.store,
            self.max_seq_length,
            self.seed,
            epoch,
            self.short_seq_prob,
            self.nsp_probability,
            self.objective,
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; its plan is computed lazily in whichever process reads first."""
        self.epoch = int(epoch)

    @property
    def plan(self) -> dict[str, np.ndarray]:
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch, _PLAN_TAG, 1])
            self._plan = _resize(self._raw_plan(self.epoch), self._len, rng)
            self._plan_epoch = self.epoch
        return self._plan

    def __getstate__(self) -> dict:
        # Workers rebuild the plan themselves: cheaper than pickling it, and the same by design.
        state = self.__dict__.copy()
        state["_plan"], state["_plan_epoch"] = {}, -1
        return state

    def __len__(self) -> int:
        return self._len

    def pair_spans(self, i: int) -> dict[str, int]:
        """Provenance of pair ``i`` (for tests and debugging): documents, token ranges, label."""
        q = self.plan
        a_lo, b_lo = int(q["a_lo"][i]), int(q["b_lo"][i])
        return {
            "a_doc": int(q["a_doc"][i]),
            "b_doc": int(q["b_doc"][i]),
            "a": (a_lo, a_lo + int(q["a_len"][i])),
            "b": (b_lo, b_lo + int(q["b_len"][i])),
            "label": int(q["label"][i]),
            "truncated": bool(q["truncated"][i]),
        }

    def stats(self) -> dict:
        """Pairs per epoch, share of random-next pairs, truncation and length, for the data
        report."""
        q = self.plan
        return {
            "pairs_per_epoch": len(self),
            "random_pair_share": float(q["label"].mean()) if q else 0.0,
            "truncation_rate": float(q["truncated"].mean()) if q else 0.0,
            "mean_pair_length": float((q["a_len"] + q["b_len"] + 3).mean()) if q else 0.0,
        }

    def __getitem__(self, i: int) -> dict:
        q = self.plan
        a_lo, b_lo = int(q["a_lo"][i]), int(q["b_lo"][i])
        la, lb = int(q["a_len"][i]), int(q["b_len"][i])
        ids = np.empty(la + lb + 3, dtype=np.int64)  # (L,) [CLS] A [SEP] B [SEP]
        ids[0], ids[la + 1], ids[-1] = self.cls_id, self.sep_id, self.sep_id
        ids[1 : la + 1] = self.store.tokens(a_lo, a_lo + la)
        ids[la + 2 : -1] = self.store.tokens(b_lo, b_lo + lb)
        types = np.zeros_like(ids)
        types[la + 2 :] = 1
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "next_sentence_label": int(q["label"][i]),
            "index": int(i),
        }
