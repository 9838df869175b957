import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bertpt.benchmarks.data import synthetic_corpus
from bertpt.data.collator import MaskingCollator
from bertpt.data.pairs import NSPPairDataset
from bertpt.data.tokenizer import load_tokenizer, train_tokenizer

V, PAD, UNK, CLS, SEP, MASK = 1000, 0, 1, 2, 3, 4
CONT = np.arange(600, V)  # "##" pieces in the explicit-vocabulary tests


def _items(n, seed=0, start=0, unk_rate=0.02):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        la, lb = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        ids = rng.integers(5, V, la + lb + 3)
        ids[rng.random(ids.size) < unk_rate] = UNK
        ids[[0, la + 1, -1]] = CLS, SEP, SEP
        types = np.r_[np.zeros(la + 2, int), np.ones(lb + 1, int)]
        items.append(
            {
                "input_ids": ids,
                "token_type_ids": types,
                "next_sentence_label": i % 2,
                "index": start + i,
            }
        )
    return items


def _collator(**kw):
    return MaskingCollator(vocab_size=V, continuation_ids=CONT, **kw)


def _batches(col, n_batches=120, batch_size=64):
    for b in range(n_batches):
        items = _items(batch_size, seed=b, start=b * batch_size)
        yield items, col(items)


def _originals(items, T):
    orig = np.zeros((len(items), T), np.int64)
    for r, x in enumerate(items):
        orig[r, : len(x["input_ids"])] = x["input_ids"]
    return orig


@pytest.mark.parametrize("mode", ["independent", "exact"])
@pytest.mark.parametrize("wwm", [False, True])
def test_rates_split_and_specials(mode, wwm):
    # the exact budget caps at 20 per sequence; 60-token sides keep round(n * 0.15) below it
    col = _collator(mask_mode=mode, whole_word_mask=wwm, max_predictions_per_seq=64)
    cand = sel = masked = rand = kept = 0
    for items, batch in _batches(col):
        ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
        orig = _originals(items, ids.shape[1])
        special = orig < 5
        assert (labels[special] == -100).all()  # specials and padding are never selected
        assert (ids[special] == orig[special]).all()
        s = labels != -100
        assert (labels[s] == orig[s]).all()
        replaced = s & (ids != orig) & (ids != MASK)
        assert (ids[replaced] >= 5).all()  # random replacements are never special
        assert (ids[~s] == orig[~s]).all()
        cand += (~special).sum()
        sel, masked = sel + s.sum(), masked + (ids[s] == MASK).sum()
        rand, kept = rand + replaced.sum(), kept + (ids[s] == orig[s]).sum()
    assert abs(sel / cand - 0.15) < 0.005, sel / cand
    assert abs(masked / sel - 0.8) < 0.01 and abs(rand / sel - 0.1) < 0.01
    assert abs(kept / sel - 0.1) < 0.01


def test_exact_count_per_sequence():
    col = _collator(mask_mode="exact", max_predictions_per_seq=5)
    for items, batch in _batches(col, n_batches=10):
        labels = batch["labels"].numpy()
        orig = _originals(items, labels.shape[1])
        n = (orig >= 5).sum(1)
        k = np.minimum(5, np.maximum(1, np.rint(n * 0.15)))
        assert ((labels != -100).sum(1) == k).all()


@pytest.mark.parametrize("mode", ["independent", "exact"])
def test_whole_word_mask_never_splits_a_word(mode):
    col = _collator(mask_mode=mode, whole_word_mask=True, max_predictions_per_seq=64)
    for items, batch in _batches(col, n_batches=20):
        labels = batch["labels"].numpy()
        orig = _originals(items, labels.shape[1])
        sel = labels != -100
        cont = (orig >= 600) & (orig < V)
        for r in range(len(items)):
            for t in range(1, labels.shape[1]):
                if cont[r, t] and orig[r, t - 1] >= 5:  # piece and its head are one word
                    assert sel[r, t] == sel[r, t - 1]


def test_batch_layout_padding_and_types():
    col = _collator(pad_to_multiple_of=8)
    items = _items(5)
    batch = col(items)
    lengths = [len(x["input_ids"]) for x in items]
    B, T = batch["input_ids"].shape
    assert B == 5 and T % 8 == 0 and T - 8 < max(lengths) <= T
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels",
                          "next_sentence_label"}  # fmt: skip
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == PAD).all()
    assert batch["next_sentence_label"].tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="outside"):
        col([{"input_ids": np.array([CLS, V + 5, SEP])}])
    for r, x in enumerate(items):
        assert batch["token_type_ids"][r, : lengths[r]].tolist() == x["token_type_ids"].tolist()


def test_reproducible_and_fresh():
    items = _items(32)
    a, b = _collator(seed=1), _collator(seed=1)
    x, y = a(items), b(items)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert torch.equal(a(items)["labels"], x["labels"])  # same batch, same mask
    b.set_epoch(1)
    assert not torch.equal(b(items)["labels"], x["labels"])  # new epoch, new mask
    assert not torch.equal(_collator(seed=2)(items)["labels"], x["labels"])
    assert not torch.equal(_collator(seed=1, rank=1)(items)["labels"], x["labels"])
    shifted = [{**it, "index": it["index"] + 1000} for it in items]
    assert not torch.equal(a(shifted)["labels"], x["labels"])
    # without an index: a per-worker batch counter keeps masks fresh batch to batch
    bare = [{k: v for k, v in it.items() if k != "index"} for it in items]
    c = _collator(seed=1)
    assert not torch.equal(c(bare)["labels"], c(bare)["labels"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("collator")
    path = synthetic_corpus(root / "corpus.txt", num_docs=150, seed=2)
    return path, train_tokenizer(path, root / "tok", vocab_size=300, show_progress=False)


def test_tokenizer_forms(corpus):
    _, tok_dir = corpus
    tok = load_tokenizer(tok_dir)
    a = MaskingCollator(tok_dir, whole_word_mask=True)
    b = MaskingCollator(tok)
    c = MaskingCollator(tok_dir / "tokenizer.json")
    assert a.vocab_size == b.vocab_size == c.vocab_size == tok.get_vocab_size()
    assert a.special_lut.sum() == 5 and a.mask_id == MASK and a.pad_id == PAD
    n_cont = sum(t.startswith("##") for t in tok.get_vocab())
    assert a.continuation_lut.sum() == n_cont > 0
    import transformers  # the reference: a test dependency, missing is an error

    hf = transformers.BertTokenizerFast.from_pretrained(str(tok_dir))
    assert MaskingCollator(hf).special_lut.tolist() == a.special_lut.tolist()


def test_dataloader_usage_workers_0_and_2(corpus, tmp_path):
    path, tok_dir = corpus
    runs = []
    for workers in (0, 2):
        ds = NSPPairDataset.from_files(path, tok_dir, max_seq_length=64, seed=0, cache_dir=tmp_path)
        ds.set_epoch(1)
        col = MaskingCollator(tok_dir, mlm_probability=0.15, seed=0)
        col.set_epoch(1)
        loader = DataLoader(ds, batch_size=32, collate_fn=col, num_workers=workers)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) > 3
    for x, y in zip(*runs, strict=True):
        assert set(x) == {"input_ids", "token_type_ids", "attention_mask", "labels",
                          "next_sentence_label"}  # fmt: skip
        assert all(torch.equal(x[k], y[k]) for k in x)
    # a loaded tokenizer works as well and builds the same pairs
    loaded = NSPPairDataset.from_files(path, load_tokenizer(tok_dir), 64, 0, cache_dir=tmp_path)
    ds.set_epoch(0)
    assert np.array_equal(loaded[3]["input_ids"], ds[3]["input_ids"])
