import json

import pytest

from bertpt.benchmarks.data import synthetic_corpus
from bertpt.data.collator import MaskingCollator
from bertpt.data.pairs import NSPPairDataset
from bertpt.data.stats import check_data, data_report, main
from bertpt.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = synthetic_corpus(root / "corpus.txt", num_docs=300, seed=3)
    return path, train_tokenizer(path, root / "tok", vocab_size=300, show_progress=False), root


def test_report_values(corpus):
    path, tok, root = corpus
    ds = NSPPairDataset.from_files(path, tok, max_seq_length=64, cache_dir=root / "cache")
    col = MaskingCollator(tok)
    r = data_report(ds.store, ds, col, batch_size=32, num_batches=40)
    assert r["documents"] == 300 and r["sentences"] > 300 and r["tokens"] > 10 * r["sentences"]
    assert r["unk_rate"] == 0  # the tokenizer was trained on this corpus
    assert r["pairs_per_epoch"] == len(ds)
    assert abs(r["random_pair_share"] - 0.5) < 0.05
    assert 0 < r["truncation_rate"] < 1 and 0 < r["padding_waste"] < 0.5
    assert abs(r["masking_rate"] - 0.15) < 0.01
    assert abs(r["mask_share"] - 0.8) < 0.03 and abs(r["random_share"] - 0.1) < 0.03
    assert abs(r["mask_share"] + r["random_share"] + r["keep_share"] - 1) < 1e-9
    check_data(r)


def test_check_data_reasons():
    ok = {"max_seq_length": 128, "documents": 10, "tokens": 1000, "pairs_per_epoch": 40}
    ok |= {"objective": "nsp", "unk_rate": 0.0}
    check_data(ok)
    cases = {
        "at least 5|>= 5": {"max_seq_length": 4},
        "no tokens": {"tokens": 0},
        "no usable pair": {"pairs_per_epoch": 0},
        ">= 2 documents": {"documents": 1},
        r"\[UNK\]": {"unk_rate": 0.3},
    }
    for reason, change in cases.items():
        with pytest.raises(ValueError, match=reason):
            check_data(ok | change)


def test_cli(corpus, capsys):
    path, tok, root = corpus
    args = [str(path), "--tokenizer", str(tok), "--cache-dir", str(root / "cache")]
    main([*args, "--max-seq-length", "64", "--num-batches", "5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 300 and "masking_rate" in report
    main([*args, "--num-batches", "2", "--whole-word-mask", "--mask-mode", "exact"])
    out = capsys.readouterr().out
    assert "random_pair_share" in out and "padding_waste" in out
    with pytest.raises(SystemExit):
        main([*args, "--max-seq-length", "4"])
    assert "at least 5" in capsys.readouterr().err
