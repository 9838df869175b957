"""RoBERTa's MLM-only inputs (Liu et al. 2019, section 4.2): FULL-SENTENCES and DOC-SENTENCES.

A sequence is ``<s>``, complete sentences read contiguously, ``</s>``: at most ``max_seq_length``
tokens, no token types, no next-sentence label. FULL-SENTENCES (``objective="mlm"``) runs on into
the next document with ``</s>`` between the two documents' sentences; DOC-SENTENCES
(``"doc-sentences"``) ends a sequence where its document ends, so the sequences near a
document's end are shorter. Sentences are packed greedily in corpus order; a sentence longer
than a sequence's room (``max_seq_length - 2``) is cut into pieces of that room, so no token is
dropped and every sentence is in exactly one sequence.

The packing is a pure function of the store and the length, as in fairseq's
``TokenBlockDataset`` that RoBERTa was trained with: the same sequences every epoch, served in a
new order by the sampler and masked afresh by the collator. Sequence ``i`` of epoch ``e`` is
therefore a pure function of ``i`` (trivially of ``(seed, e, i)``), in every worker, rank and
resumed run, and the length is the same in every epoch.
"""

from __future__ import annotations

import os
from itertools import pairwise

import numpy as np
from torch.utils.data import Dataset

from bertpt.common.errors import UserError
from bertpt.data.store import DocumentStore, store_for
from bertpt.data.tokenizer import special_token_ids

# data.objective -> whether a sequence may cross into the next document
CROSS_DOCUMENTS = {"mlm": True, "doc-sentences": False}


def _units(store: DocumentStore, room: int) -> dict[str, np.ndarray]:
    """The sentences of the view in order, each long one cut into pieces of at most ``room``
    tokens: virtual token start ``lo`` (U,), ``length`` (U,) and ``doc_start`` (U,) bool, true on
    the first piece of each document's first sentence."""
    counts = store.doc_counts
    first = np.repeat(store.doc_starts - np.cumsum(counts) + counts, counts)  # (S,) view order
    sentence = first + np.arange(counts.sum())  # global sentence index of each view sentence
    lengths = store.sentence_lengths[sentence].astype(np.int64)
    pieces = -(-lengths // room)  # (S,) ceil
    piece = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # 0, 1, ...
    lo = np.repeat(store.token_offsets[sentence], pieces) + piece * room
    length = np.minimum(room, np.repeat(lengths, pieces) - piece * room)
    doc_first = np.zeros(len(sentence), bool)
    doc_first[np.cumsum(counts) - counts] = True
    return {"lo": lo, "length": length, "doc_start": np.repeat(doc_first, pieces) & (piece == 0)}


def pack(store: DocumentStore, max_seq_length: int, cross_documents: bool) -> dict[str, np.ndarray]:
    """Greedy packing: ``start``, ``end`` (Q,) unit ranges of the sequences, plus the units."""
    room = max_seq_length - 2  # <s> ... </s>
    u = _units(store, room)
    n = len(u["length"])
    # A separator costs one token before a document's first unit, except at a sequence's start.
    sep = u["doc_start"] & cross_documents
    C = np.concatenate([[0], np.cumsum(u["length"] + sep)])  # (U+1,)
    p = np.arange(n)
    nxt = np.searchsorted(C, C[:-1] + room + sep, side="right") - 1  # (U,) end of a start at p
    if not cross_documents:
        doc_end = np.append(np.flatnonzero(u["doc_start"])[1:], n)
        nxt = np.minimum(nxt, doc_end[np.cumsum(u["doc_start"]) - 1])
    nxt = np.maximum(nxt, p + 1).tolist()  # a unit fits alone by construction
    starts, q = [], 0
    while q < n:  # follow the chain of starts: one step per sequence
        starts.append(q)
        q = nxt[q]
    start = np.asarray(starts, dtype=np.int64)
    return {**u, "start": start, "end": np.append(start[1:], n)}


class PackedSentences(Dataset):
    """``<s> sentences </s>`` sequences of a :class:`DocumentStore` for MLM-only pretraining."""

    def __init__(
        self,
        store: DocumentStore,
        max_seq_length: int = 512,
        objective: str = "mlm",
        cls_id: int = 0,
        sep_id: int = 2,
    ) -> None:
        if objective not in CROSS_DOCUMENTS:
            raise UserError(
                f"objective must be one of {', '.join(CROSS_DOCUMENTS)}, not {objective!r}"
            )
        if max_seq_length < 3:
            raise UserError(f"max_seq_length ({max_seq_length}) must be at least 3: <s> x </s>")
        if len(store) == 0:
            raise UserError("the document store is empty: the corpus yields no tokens")
        self.store, self.max_seq_length, self.objective = store, max_seq_length, objective
        self.cls_id, self.sep_id = cls_id, sep_id
        self.epoch = 0
        self.plan = pack(store, max_seq_length, CROSS_DOCUMENTS[objective])

    @classmethod
    def from_files(
        cls,
        files,
        tokenizer,
        max_seq_length: int = 512,
        cache_dir: str | os.PathLike | None = None,
        *,
        format: str = "auto",
        text_column: str = "text",
        num_proc: int = 1,
        objective: str = "mlm",
    ) -> PackedSentences:
        """Tokenize (and cache) ``files`` with ``tokenizer`` (a folder, tokenizer.json or a
        loaded tokenizer) and pack them."""
        store = store_for(
            files, tokenizer, cache_dir, format=format, text_column=text_column, num_proc=num_proc
        )
        roles = special_token_ids(tokenizer)
        return cls(store, max_seq_length, objective, roles["cls"], roles["sep"])

    def set_epoch(self, epoch: int) -> None:
        """The sequences are the same in every epoch (see the module doc); kept for samplers."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.plan["start"])

    def segments(self, i: int) -> list[tuple[int, int]]:
        """The virtual token ranges of sequence ``i``, one per document it reads from."""
        q = self.plan
        p, e = int(q["start"][i]), int(q["end"][i])
        cuts = [p, *(p + 1 + np.flatnonzero(q["doc_start"][p + 1 : e])).tolist(), e]
        # the units of one document are adjacent in the virtual token order
        return [
            (int(q["lo"][a]), int(q["lo"][b - 1] + q["length"][b - 1])) for a, b in pairwise(cuts)
        ]

    def __getitem__(self, i: int) -> dict:
        segments = self.segments(i)
        n = sum(hi - lo for lo, hi in segments) + len(segments) + 1
        ids = np.empty(n, dtype=np.int64)  # (L,) <s> A </s> B </s> ...: </s> after each document
        ids[0], at = self.cls_id, 1
        for lo, hi in segments:
            ids[at : at + hi - lo] = self.store.tokens(lo, hi)
            at += hi - lo
            ids[at] = self.sep_id
            at += 1
        return {"input_ids": ids, "index": int(i)}

    def stats(self) -> dict:
        """Sequences per epoch and their mean length, for the data report."""
        q = self.plan
        docs = (
            np.add.reduceat(q["doc_start"].astype(np.int64), q["start"])
            + ~q["doc_start"][q["start"]]
        )
        tokens = np.add.reduceat(q["length"], q["start"])
        return {
            "sequences_per_epoch": len(self),
            "mean_sequence_length": float((tokens + docs + 1).mean()),
            "documents_per_sequence": float(docs.mean()),
        }
