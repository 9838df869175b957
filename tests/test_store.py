import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from bertpt.benchmarks.data import synthetic_corpus
from bertpt.data.corpus import read_documents
from bertpt.data.store import DocumentStore, build_store
from bertpt.data.tokenizer import load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    path = synthetic_corpus(root / "corpus.txt", num_docs=120, seed=1)
    tok = train_tokenizer(path, root / "tok", vocab_size=300, show_progress=False)
    return path, tok


def _expected(path, tok_dir):
    tok = load_tokenizer(tok_dir)
    docs = []
    for doc in read_documents(path):
        sents = [tok.encode(s, add_special_tokens=False).ids for s in doc]
        if sents := [s for s in sents if s]:
            docs.append(sents)
    return docs


def _as_lists(store):
    return [[s.tolist() for s in store.doc(i)] for i in range(len(store))]


def test_build_matches_direct_tokenisation(corpus, tmp_path):
    path, tok = corpus
    store = build_store(path, tok, tmp_path)
    expected = _expected(path, tok)
    assert _as_lists(store) == expected
    assert store.num_sentences == sum(len(d) for d in expected)
    assert store.num_tokens == sum(len(s) for d in expected for s in d)
    assert store.sentence_lengths.tolist() == [len(s) for d in expected for s in d]
    assert store.table.schema.field("sentences").type == pa.list_(pa.list_(pa.int32()))


def test_second_build_hits_cache_and_changes_rebuild(corpus, tmp_path):
    path, tok = corpus
    first = build_store(path, tok, tmp_path / "cache")
    data = next(first.path.glob("tokens*.arrow"))
    mtime = data.stat().st_mtime_ns
    again = build_store(path, tok, tmp_path / "cache")
    assert again.path == first.path and data.stat().st_mtime_ns == mtime  # reused, not rewritten

    other_tok = train_tokenizer(path, tmp_path / "tok2", vocab_size=250, show_progress=False)
    rebuilt = build_store(path, other_tok, tmp_path / "cache")
    assert rebuilt.path != first.path
    assert _as_lists(rebuilt) == _expected(path, other_tok)

    changed = tmp_path / "corpus.txt"
    changed.write_text(path.read_text() + "Kalo mi neru.\nTavo zi.\n", encoding="utf-8")
    a = build_store(changed, tok, tmp_path / "cache")
    changed.write_text(path.read_text(), encoding="utf-8")
    b = build_store(changed, tok, tmp_path / "cache")
    assert len({first.path, a.path, b.path}) == 3 and len(a) == len(first) + 1


def test_num_proc_gives_the_same_store(corpus, tmp_path):
    path, tok = corpus
    one = build_store(path, tok, tmp_path / "a", num_proc=1, batch_size=16)
    two = build_store(path, tok, tmp_path / "b", num_proc=2, batch_size=16)
    assert _as_lists(one) == _as_lists(two)


def test_empty_sentences_and_documents_dropped(tmp_path):
    tok_corpus = synthetic_corpus(tmp_path / "c.txt", num_docs=60)
    tok = train_tokenizer(tok_corpus, tmp_path / "tok", vocab_size=250, show_progress=False)
    text = "Kalo mi.\n\n\n\n   \n\nNeru tavo zi.\nTa.\n\n\u200b\n\n"
    (tmp_path / "odd.txt").write_text(text, encoding="utf-8")
    store = build_store(tmp_path / "odd.txt", tok, tmp_path / "cache", format="bert")
    assert len(store) == 2 and store.meta["raw_documents"] >= 2
    assert all(len(s) > 0 for i in range(len(store)) for s in store.doc(i))

    (tmp_path / "blank.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no"):
        build_store(tmp_path / "blank.txt", tok, tmp_path / "cache", format="bert")


def test_from_token_lists_split_and_pickle(corpus, tmp_path):
    store = DocumentStore.from_token_lists([[[5, 6], []], [], [[7, 8, 9]], [[10]], [[11], [12]]])
    assert len(store) == 4 and _as_lists(store)[2] == [[10]]
    train, val = store.split(0.1, seed=3)
    ids = np.concatenate([train.doc_ids, val.doc_ids])
    assert sorted(ids.tolist()) == [0, 1, 2, 3] and len(val) == 2  # NSP needs two
    assert train.num_sentences + val.num_sentences == store.num_sentences
    assert _as_lists(pickle.loads(pickle.dumps(val))) == _as_lists(val)

    path, tok = corpus
    disk = build_store(path, tok, tmp_path)
    tr, va = disk.split(0.1, seed=0)
    assert len(va) == 12 and len(tr) == len(disk) - 12
    blob = pickle.dumps(tr)
    assert len(blob) < 20_000  # reopens the memory map; never ships the tokens
    assert _as_lists(pickle.loads(blob)) == _as_lists(tr)
    with pytest.raises(ValueError, match="val_fraction"):
        disk.split(1.5)


def test_multi_chunk_and_sliced_tables():
    rng = np.random.default_rng(0)
    docs = [
        [rng.integers(5, 99, rng.integers(1, 9)).tolist() for _ in range(rng.integers(1, 5))]
        for _ in range(50)
    ]
    table = DocumentStore.from_token_lists(docs).table
    chunked = pa.concat_tables([table.slice(0, 7), table.slice(7, 20), table.slice(27)])
    assert chunked.column("sentences").num_chunks == 3
    store = DocumentStore(chunked)
    assert _as_lists(store) == docs
    lo, hi = store.doc_token_ranges
    flat = [[t for s in d for t in s] for d in docs]
    assert [store.tokens(a, b).tolist() for a, b in zip(lo, hi, strict=True)] == flat


def test_a_killed_build_leaves_nothing_the_next_build_trips_over(corpus, tmp_path):
    """A build killed midway leaves its temporary folder; the next build, even of another
    corpus or format, removes it, but not the temporary folder of a build still running nor one
    of another host."""
    path, tok = corpus
    cache = tmp_path / "cache"
    hang = (
        "import sys, time, bertpt.data.store as s\n"
        "def hang(tmp, *args):\n"
        "    (tmp / 'tokens.arrow').write_bytes(b'half written')\n"
        "    print('building', flush=True)\n"
        "    time.sleep(600)\n"
        "s._build_into = hang\n"
        "s.build_store(sys.argv[1], sys.argv[2], sys.argv[3], format='lines')\n"
    )
    cmd = [sys.executable, "-c", hang, str(path), str(tok), str(cache)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "building\n"
    finally:
        proc.kill()
        proc.wait()
    [left] = cache.glob(".store-*.tmp")
    assert (left / "tokens.arrow").is_file()
    running = cache / f".store-other.{socket.gethostname()}-{os.getpid()}.x.tmp"
    other_host = cache / f".store-other.elsewhere-{proc.pid}.x.tmp"
    for d in (running, other_host):
        d.mkdir()

    store = build_store(path, tok, cache)
    assert _as_lists(store) == _expected(path, tok)
    assert not left.exists() and running.is_dir() and other_host.is_dir()
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".x.tmp")) == [
        store.path.name
    ]
