"""RoBERTa's FULL-SENTENCES and DOC-SENTENCES sequences (bertpt.data.packing)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bertpt.data.collator import MaskingCollator
from bertpt.data.packing import PackedSentences
from bertpt.data.store import DocumentStore

BOS, PAD, EOS, MASK = 0, 1, 2, 4


def _docs(num_docs=400, seed=0):
    """Docs of 1-12 sentences of 1-30 tokens; a few sentences longer than a sequence. Token
    ids >= 5 and unique across the corpus, so each token says where it came from."""
    rng = np.random.default_rng(seed)
    docs, next_id = [], 5
    for _ in range(num_docs):
        doc = []
        for _ in range(int(rng.integers(1, 13))):
            n = int(rng.integers(1, 31)) if rng.random() > 0.02 else 150
            doc.append(list(range(next_id, next_id + n)))
            next_id += n
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def docs():
    return _docs()


@pytest.fixture(scope="module")
def store(docs):
    return DocumentStore.from_token_lists(docs)


def _read(ds, i):
    """Sequence i split at </s>: the token runs between the separators, each from one doc."""
    ids = ds[i]["input_ids"]
    assert ids[0] == BOS and ids[-1] == EOS and BOS not in ids[1:]
    runs = np.split(ids[1:], np.flatnonzero(ids[1:] == EOS) + 1)
    return [r[:-1] for r in runs if r.size]


@pytest.mark.parametrize("objective", ["mlm", "doc-sentences"])
@pytest.mark.parametrize("max_len", [16, 64, 512])
def test_every_sentence_once_in_order_within_the_length(store, docs, objective, max_len):
    ds = PackedSentences(store, max_len, objective)
    doc_of = {t: d for d, doc in enumerate(docs) for s in doc for t in s}
    seen, docs_per_seq = [], []
    for i in range(len(ds)):
        assert len(ds[i]["input_ids"]) <= max_len and set(ds[i]) == {"input_ids", "index"}
        runs = _read(ds, i)
        for run in runs:  # one document per run, contiguous tokens
            assert len({doc_of[t] for t in run}) == 1 and np.all(np.diff(run) == 1)
        docs_per_seq.append(len(runs))
        seen.extend(t for run in runs for t in run)
    # every token once, in corpus order: no sentence lost, cut or repeated within an epoch
    assert seen == [t for doc in docs for s in doc for t in s]
    if objective == "doc-sentences":
        assert max(docs_per_seq) == 1
    else:  # sequences run on into the next document, with </s> between
        assert max(docs_per_seq) > 1 or max_len < 32
    assert ds.stats()["sequences_per_epoch"] == len(ds)


def test_sequences_are_full_sentences_packed_greedily(store, docs):
    ds = PackedSentences(store, 64, "mlm")
    sentence_start = {t: s[0] for doc in docs for s in doc for t in s}
    lengths = []
    for i in range(len(ds)):
        first = int(_read(ds, i)[0][0])
        # a sequence starts a sentence, or a piece of one longer than its 62 tokens of room
        assert (first - sentence_start[first]) % 62 == 0
        lengths.append(len(ds[i]["input_ids"]))
    # greedy: most sequences are nearly full (sentences are at most 30 tokens)
    assert np.mean(np.array(lengths) >= 64 - 30) > 0.9


def test_long_sentences_are_cut_not_dropped():
    store = DocumentStore.from_token_lists([[list(range(5, 105))], [[200, 201]]])
    ds = PackedSentences(store, 10, "doc-sentences")
    assert [len(ds[i]["input_ids"]) for i in range(len(ds))] == [10] * 12 + [6, 4]


def test_index_addressable_deterministic_and_the_same_every_epoch(store):
    a, b = PackedSentences(store, 64), PackedSentences(store, 64)
    first = [a[i]["input_ids"] for i in range(len(a))]
    a.set_epoch(3)
    worker = pickle.loads(pickle.dumps(a))  # what a DataLoader worker receives
    for ds in (a, b, worker):
        assert all(np.array_equal(ds[i]["input_ids"], x) for i, x in enumerate(first))
    assert all(a[i]["index"] == i for i in range(0, len(a), 17))


def test_split_views_pack_their_own_documents(store):
    _, val = store.split(0.2, seed=0)
    ds = PackedSentences(val, 64)
    tokens = np.concatenate([r for i in range(len(ds)) for r in _read(ds, i)])
    expected = np.concatenate([s for d in range(len(val)) for s in val.doc(d)])
    assert np.array_equal(tokens, expected)


def test_batches_have_no_token_types_or_sentence_labels(store):
    ds = PackedSentences(store, 64)
    special = (BOS, PAD, EOS, 3, MASK)
    collate = MaskingCollator(vocab_size=20_000, pad_id=PAD, mask_id=MASK, special_ids=special)
    batch = collate([ds[i] for i in range(8)])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    ids, labels = batch["input_ids"], batch["labels"]
    assert torch.all(ids[batch["attention_mask"] == 0] == PAD)
    # <s>, </s> and <pad> are never predicted
    for t in (BOS, PAD, EOS):
        assert not torch.any(labels == t)


def test_errors(store):
    with pytest.raises(ValueError, match="objective"):
        PackedSentences(store, 64, "nsp")
    with pytest.raises(ValueError, match="at least 3"):
        PackedSentences(store, 2)
    with pytest.raises(ValueError, match="empty"):
        PackedSentences(DocumentStore.from_token_lists([[]]), 64)
