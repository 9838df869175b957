import pickle

import numpy as np
import pytest

from bertpt.data.pairs import NSPPairDataset
from bertpt.data.store import DocumentStore

CLS, SEP = 2, 3


def _store(num_docs=3000, seed=0):
    """Docs of 1-15 sentences of 1-40 tokens (ids >= 5), some one-sentence docs and some
    sentences longer than any max_seq_length used here."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(num_docs):
        n = 1 if rng.random() < 0.1 else int(rng.integers(2, 16))
        lengths = [int(rng.integers(1, 41)) if rng.random() > 0.03 else 300 for _ in range(n)]
        docs.append([rng.integers(5, 1000, k).tolist() for k in lengths])
    return DocumentStore.from_token_lists(docs)


@pytest.fixture(scope="module")
def store():
    return _store()


def _doc_range(store, d):
    lo, hi = store.doc_token_ranges
    return int(lo[d]), int(hi[d])


def test_random_share_and_provenance(store):
    ds = NSPPairDataset(store, max_seq_length=48, seed=1)
    assert len(ds) >= 10_000
    labels = ds.plan["label"]
    assert abs(labels.mean() - 0.5) < 0.02
    for i in range(len(ds)):
        sp = ds.pair_spans(i)
        a_lo, a_hi = _doc_range(store, sp["a_doc"])
        assert a_lo <= sp["a"][0] < sp["a"][1] <= a_hi  # A is a span of its document
        b_lo, b_hi = _doc_range(store, sp["b_doc"])
        assert b_lo <= sp["b"][0] < sp["b"][1] <= b_hi
        if sp["label"]:
            assert sp["b_doc"] != sp["a_doc"]  # negatives never come from their own document
        else:
            assert sp["b_doc"] == sp["a_doc"] and sp["b"][0] >= sp["a"][1]  # B follows A


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_random_share_follows_nsp_probability(store, p):
    labels = NSPPairDataset(store, max_seq_length=40, nsp_probability=p).plan["label"]
    assert labels.size >= 10_000
    assert abs(labels.mean() - p) < 0.02


def test_layout_and_fit(store):
    for msl in (5, 16, 128):
        ds = NSPPairDataset(store, max_seq_length=msl, seed=2)
        for i in range(0, len(ds), 7):
            x, sp = ds[i], ds.pair_spans(i)
            ids, types = x["input_ids"], x["token_type_ids"]
            la, lb = sp["a"][1] - sp["a"][0], sp["b"][1] - sp["b"][0]
            assert len(ids) == la + lb + 3 <= msl and la >= 1 and lb >= 1
            assert ids[0] == CLS and ids[la + 1] == SEP and ids[-1] == SEP
            assert (ids == SEP).sum() == 2 and (ids == CLS).sum() == 1
            assert types.tolist() == [0] * (la + 2) + [1] * (lb + 1)
            assert ids[1 : la + 1].tolist() == store.tokens(*sp["a"]).tolist()
            assert ids[la + 2 : -1].tolist() == store.tokens(*sp["b"]).tolist()
            assert x["index"] == i and x["next_sentence_label"] == sp["label"]


def test_truncation_only_when_needed(store):
    ds = NSPPairDataset(store, max_seq_length=128, short_seq_prob=0.0)
    q = ds.plan
    lengths = q["a_len"] + q["b_len"]
    assert lengths.max() == 125 and np.all(lengths[q["truncated"]] == 125)
    # a long document fills pairs up to the target: most pairs are (nearly) full
    assert np.mean(lengths >= 100) > 0.5


def test_short_targets(store):
    full = NSPPairDataset(store, max_seq_length=128, short_seq_prob=0.0).plan
    some = NSPPairDataset(store, max_seq_length=128, short_seq_prob=0.5).plan
    short = NSPPairDataset(store, max_seq_length=128, short_seq_prob=1.0).plan
    means = [(q["a_len"] + q["b_len"]).mean() for q in (full, some, short)]
    assert means[0] > means[1] + 8 > means[2] + 16


def test_determinism_epochs_and_pickle(store):
    a, b = NSPPairDataset(store, seed=5), NSPPairDataset(store, seed=5)
    idx = range(0, len(a), 97)
    same = [np.array_equal(a[i]["input_ids"], b[i]["input_ids"]) for i in idx]
    assert all(same)
    e0 = [a[i]["input_ids"] for i in idx]
    a.set_epoch(1)
    assert len(a) == len(b)  # constant length for samplers
    changed = [not np.array_equal(a[i]["input_ids"], x) for i, x in zip(idx, e0, strict=True)]
    assert np.mean(changed) > 0.9  # pairs drawn anew every epoch
    worker = pickle.loads(pickle.dumps(a))  # what a DataLoader worker receives
    assert worker._plan == {} and worker.epoch == 1
    assert all(np.array_equal(worker[i]["input_ids"], a[i]["input_ids"]) for i in idx)
    a.set_epoch(0)
    assert all(np.array_equal(a[i]["input_ids"], x) for i, x in zip(idx, e0, strict=True))
    other = NSPPairDataset(store, seed=6)
    assert not all(np.array_equal(other[i]["input_ids"], x) for i, x in zip(idx, e0, strict=True))


def test_sop_negatives_are_swapped_positives(store):
    ds = NSPPairDataset(store, max_seq_length=64, objective="sop", seed=3)
    assert abs(ds.plan["label"].mean() - 0.5) < 0.02
    for i in range(0, len(ds), 3):
        sp = ds.pair_spans(i)
        assert sp["a_doc"] == sp["b_doc"]
        if sp["label"]:
            assert sp["a"][0] >= sp["b"][1]  # A comes after B in the document
        else:
            assert sp["b"][0] >= sp["a"][1]


def test_one_sentence_documents_split_inside_the_sentence():
    store = DocumentStore.from_token_lists([[list(range(5, 25))], [list(range(30, 40))]])
    ds = NSPPairDataset(store, max_seq_length=64, nsp_probability=0.5)
    for e in range(20):
        ds.set_epoch(e)
        for i in range(len(ds)):
            sp = ds.pair_spans(i)
            if not sp["label"]:
                assert sp["a"][1] == sp["b"][0]  # head and tail of the one sentence


def test_long_sentences_are_truncated_not_dropped():
    store = DocumentStore.from_token_lists([[list(range(5, 1005))], [list(range(5, 2005))]])
    ds = NSPPairDataset(store, max_seq_length=32)
    assert len(ds) == 2 and all(len(ds[i]["input_ids"]) == 32 for i in range(2))


def test_errors():
    one_doc = DocumentStore.from_token_lists([[[5, 6, 7], [8, 9]]])
    with pytest.raises(ValueError, match="at least 2 documents"):
        NSPPairDataset(one_doc)
    assert len(NSPPairDataset(one_doc, objective="sop")) == 1
    with pytest.raises(ValueError, match="at least 5"):
        NSPPairDataset(_store(10), max_seq_length=4)
    with pytest.raises(ValueError, match="no usable pair"):
        NSPPairDataset(DocumentStore.from_token_lists([[[5]], [[6]], [[7]]]))
    with pytest.raises(ValueError, match="empty"):
        NSPPairDataset(DocumentStore.from_token_lists([[], [[]]]))
    with pytest.raises(ValueError, match="objective"):
        NSPPairDataset(_store(10), objective="mlm")


def test_split_views_draw_negatives_inside_the_view(store):
    _, val = store.split(0.2, seed=0)
    ds = NSPPairDataset(val, max_seq_length=64)
    docs = {int(d) for i in range(len(ds)) for d in (ds.pair_spans(i)["b_doc"],)}
    assert max(docs) < len(val)  # view-local document numbers
    lo, hi = val.doc_token_ranges
    for i in range(0, len(ds), 5):
        sp = ds.pair_spans(i)
        assert lo[sp["b_doc"]] <= sp["b"][0] < sp["b"][1] <= hi[sp["b_doc"]]
