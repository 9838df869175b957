"""RoBERTa's byte-level BPE tokenizer: special ids, pair template, <mask>, transformers, and the
same files in every process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, RobertaTokenizerFast

import bertpt
from bertpt.common.errors import UserError
from bertpt.data import bpe
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


def _merged(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """``symbols`` with each occurrence of ``pair`` joined into one, leftmost first."""
    out, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i : i + 2]) == pair:
            out.append("".join(pair))
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _pair_counts(split: dict[str, list[str]], words: Counter[str]) -> Counter[tuple[str, str]]:
    counts = Counter()
    for word, symbols in split.items():
        for two in pairwise(symbols):
            counts[two] += words[word]
    return counts


def _replay(words: Counter[str], merges: list[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """Replay ``merges`` on the byte-level ``words`` (with their counts), checking that each
    joins a pair of the most frequent at its step; the pair counts left after the last."""
    split = {word: list(word) for word in words}
    previous = math.inf
    for pair in merges:
        counts = _pair_counts(split, words)
        most = max(counts.values())
        # a merge forms new pairs no more frequent than itself: the counts never rise
        assert counts[pair] == most <= previous, (pair, counts[pair], most, previous)
        previous = most
        split = {word: _merged(symbols, pair) for word, symbols in split.items()}
    return _pair_counts(split, words)


def test_each_merge_joins_a_most_frequent_pair_until_none_is_met_twice(default_corpus, tmp_path):
    """BPE as its definition has it, whatever the library's tie-breaking: replayed on the
    corpus's byte-level words, each merge of merges.txt joins a pair of the most frequent at its
    step. The vocabulary is the specials, the 256 bytes, one token per merge after its parts and
    <mask>. Asked for more than the corpus has, training goes on until no pair is met
    min_frequency (2) times, and the smaller vocabulary's merges are the first of the larger's."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(default_corpus.read_text().splitlines()[:120]) + "\n")
    out = train_tokenizer(
        corpus, tmp_path / "bpe", vocab_size=400, lowercase=False, kind="bpe", show_progress=False
    )
    tok = load_tokenizer(out)
    vocab = tok.get_vocab()

    def merges_of(merges_txt: str) -> list[tuple[str, str]]:
        return [tuple(m.split(" ")) for m in merges_txt.splitlines()[1:]]

    merges = merges_of((out / "merges.txt").read_text())
    assert len(vocab) == 4 + 256 + len(merges) + 1 == 400 and vocab["<mask>"] == 399
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)
    assert all(max(vocab[a], vocab[b]) < vocab[a + b] < 399 for a, b in merges)
    sentences = corpus_sentences(corpus)
    words = Counter(w for s in sentences for w, _ in tok.pre_tokenizer.pre_tokenize_str(s))
    _replay(words, merges)

    # train_bpe itself: train_tokenizer refuses a corpus that falls this far short of the size
    full = bpe.train_bpe(corpus_sentences(corpus), 100_000, 2, show_progress=False)
    all_merges = merges_of(bpe.bpe_files(full, 512)["merges.txt"])
    assert len(all_merges) > 3 * len(merges) and all_merges[: len(merges)] == merges
    left = _replay(words, all_merges)
    assert max(left.values(), default=0) == 1, f"pairs left, most frequent: {left.most_common(3)}"


def test_frequent_words_are_tokens_and_every_text_decodes_as_it_was(
    default_corpus, bpe_tokenizer_dir
):
    """Byte-level BPE loses nothing: any text, a corpus sentence or odd characters, decodes to
    itself. A word met n times gives each of its pairs n occurrences, so a word left in pieces
    leaves a pair met n times unmerged: here the most frequent such word is met 200 times, the
    50th most frequent word 853 times."""
    tok = load_tokenizer(bpe_tokenizer_dir)
    sentences = list(corpus_sentences(default_corpus))
    words = Counter(w for s in sentences for w, _ in tok.pre_tokenizer.pre_tokenize_str(s))
    vocab = tok.get_vocab()
    assert [w for w, _ in words.most_common(50) if w not in vocab] == []
    for text in [t for t in TEXTS if "<mask>" not in t] + sentences[::20]:
        assert tok.decode(tok.encode(text).ids) == text, text


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
