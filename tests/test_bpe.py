"""RoBERTa's byte-level BPE tokenizer: special ids, pair template, <mask>, transformers, and the
same files in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers, trainers
from transformers import AutoTokenizer, RobertaTokenizerFast

import bertpt
from bertpt.common.errors import UserError
from bertpt.data.tokenizer import (
    corpus_sentences,
    load_tokenizer,
    main,
    special_token_ids,
    train_tokenizer,
)

TEXTS = [
    "Return the value of x.",
    "  Two  spaces,\ta tab and a newline\n",
    "Ünïcödé — “quotes”, 日本語 and an emoji 🙂",
    "The capital of France is <mask>.",
    "Paris is the<mask> city, isn't it?",
]


def test_special_ids_and_files(bpe_tokenizer_dir):
    tok = load_tokenizer(bpe_tokenizer_dir)
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tok.token_to_id("<mask>") == tok.get_vocab_size() - 1 == 999
    assert special_token_ids(tok) == dict(pad=1, unk=3, cls=0, sep=2, mask=999)
    files = {p.name for p in bpe_tokenizer_dir.iterdir()}
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= files
    assert "vocab.txt" not in files
    vocab = json.loads((bpe_tokenizer_dir / "vocab.json").read_text())
    assert vocab == tok.get_vocab() and vocab["<mask>"] == 999
    # every byte is in the alphabet: nothing is ever <unk>
    assert all(3 not in tok.encode(t).ids for t in TEXTS)


def test_pair_template_and_mask_lstrip(bpe_tokenizer_dir):
    tok = load_tokenizer(bpe_tokenizer_dir)
    a, b = tok.encode("First one.", add_special_tokens=False), tok.encode("Second one.")
    pair = tok.encode("First one.", "Second one.")
    inner = b.ids[1:-1]
    assert pair.ids == [0, *a.ids, 2, 2, *inner, 2]  # <s> A </s></s> B </s>
    assert set(pair.type_ids) == {0}

    # <mask> takes the space on its left: " <mask>" is the one token, as "Ġword" would be
    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    assert ids("Paris is the <mask> city") == [*ids("Paris is the"), 999, *ids(" city")]
    assert tok.decode(tok.encode("Hello world, again.").ids) == "Hello world, again."


@pytest.mark.parametrize("cls", [RobertaTokenizerFast, AutoTokenizer])
def test_transformers_loads_it_as_roberta_with_the_same_ids(bpe_tokenizer_dir, cls):
    hf = cls.from_pretrained(bpe_tokenizer_dir)
    assert type(hf).__name__ in ("RobertaTokenizerFast", "RobertaTokenizer")  # one class in v5
    assert hf.is_fast
    ids = (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id, hf.mask_token_id)
    assert ids == (0, 1, 2, 3, 999)
    own = load_tokenizer(bpe_tokenizer_dir)
    for text in TEXTS:
        assert hf(text)["input_ids"] == own.encode(text).ids, text
    assert hf(TEXTS[0], TEXTS[1])["input_ids"] == own.encode(TEXTS[0], TEXTS[1]).ids


def test_as_the_library_trainer_gives_it(default_corpus, bpe_tokenizer_dir):
    """The vocabulary is the tokenizers BpeTrainer's, <mask> appended."""
    lib = Tokenizer(__import__("tokenizers").models.BPE())
    lib.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=999,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lib.train_from_iterator(corpus_sentences(default_corpus), trainer)
    ours = load_tokenizer(bpe_tokenizer_dir).get_vocab()
    assert {t: i for t, i in ours.items() if t != "<mask>"} == lib.get_vocab()


def test_same_files_in_every_process(default_corpus, tmp_path):
    """Two processes with different hash seeds write the same files, byte for byte."""
    env = {**os.environ, "PYTHONPATH": str(Path(bertpt.__file__).parents[1])}
    cli = [sys.executable, "-m", "bertpt.tokenizer", str(default_corpus), "--kind", "bpe"]
    outs = [tmp_path / "seed1", tmp_path / "seed2"]
    for seed, out in zip(("1", "2"), outs, strict=True):
        env["PYTHONHASHSEED"] = seed
        cmd = [*cli, "--vocab-size", "3000", "--out", str(out)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert json.loads((outs[0] / "bertpt_tokenizer.json").read_text())["kind"] == "bpe"


def test_kind_joins_the_settings_and_bpe_is_cased(default_corpus, bpe_tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match="already holds a different tokenizer"):
        train_tokenizer(default_corpus, bpe_tokenizer_dir, vocab_size=1000, lowercase=False)
    with pytest.raises(UserError, match=r"BPE keeps case, .* tokenizer\.lowercase=false"):
        train_tokenizer(default_corpus, tmp_path / "t", vocab_size=1000, kind="bpe")
    with pytest.raises(UserError, match=r"tokenizer\.kind='unigram' is not a"):
        train_tokenizer(default_corpus, tmp_path / "t", kind="unigram")
    main(
        [
            str(default_corpus),
            "--out",
            str(tmp_path / "cli"),
            "--kind",
            "bpe",
            "--vocab-size",
            "600",
        ]
    )
    assert load_tokenizer(tmp_path / "cli").token_to_id("<mask>") == 599
