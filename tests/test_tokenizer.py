import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter
from itertools import islice, pairwise
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

import bertpt
from bertpt.benchmarks.tokenizer import main as bench_main
from bertpt.common.errors import UserError
from bertpt.data.tokenizer import (
    SPECIAL_TOKENS,
    UNK_ID,
    build_tokenizer,
    copy_tokenizer,
    corpus_sentences,
    load_tokenizer,
    main,
    tokenizer_hash,
    train_tokenizer,
)
from bertpt.data.wordpiece import count_words, train_vocab


def test_specials_and_files(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == 2000
    vocab = (tokenizer_dir / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 2000 and vocab[:5] == SPECIAL_TOKENS
    assert all(vocab[i] == tok.id_to_token(i) for i in range(0, 2000, 97))


@pytest.mark.parametrize("cls", [BertTokenizerFast, AutoTokenizer])
def test_transformers_round_trip(tokenizer_dir, cls):
    hf = cls.from_pretrained(tokenizer_dir)
    assert (
        hf.pad_token_id,
        hf.unk_token_id,
        hf.cls_token_id,
        hf.sep_token_id,
        hf.mask_token_id,
    ) == (
        0,
        1,
        2,
        3,
        4,
    )
    enc = hf("Return The Value.", "The second SENTENCE is here.")
    ids, types = enc["input_ids"], enc["token_type_ids"]
    first_sep = ids.index(3)
    assert ids[0] == 2 and ids[-1] == 3 and ids.count(3) == 2
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    # uncased: case does not change the ids
    assert hf("return the value.")["input_ids"] == hf("RETURN THE VALUE.")["input_ids"]
    assert "[UNK]" not in hf.convert_ids_to_tokens(ids)
    # same ids as bertpt's own tokenizer
    assert (
        load_tokenizer(tokenizer_dir)
        .encode("Return The Value.", "The second SENTENCE is here.")
        .ids
        == ids
    )


ACCENTED = "Élan naïve Straße ÜBER café CAFÉ Ødegaard résumé Ångström"


def test_uncased_folds_case_and_accents_and_cased_keeps_them(tmp_path):
    """strip_accents follows lowercase, as in BERT: the uncased vocabulary holds no capital and no
    accent, and a word encodes as its plain lowercase self; the cased one keeps both, through
    transformers too, and decodes the text back as it was."""
    corpus = tmp_path / "accents.txt"
    words = ACCENTED.split()
    corpus.write_text(
        "".join(" ".join(words[i:] + words[:i]) + ".\n" for i in range(len(words))) * 3
    )
    uncased = load_tokenizer(
        train_tokenizer(corpus, tmp_path / "uncased", vocab_size=80, show_progress=False)
    )
    folded = {c for t in uncased.get_vocab() if t not in SPECIAL_TOKENS for c in t}
    assert not {c for c in folded if c != c.lower() or unicodedata.normalize("NFD", c) != c}
    ids = uncased.encode(ACCENTED).ids
    assert ids == uncased.encode("elan naive straße uber cafe cafe ødegaard resume angstrom").ids
    assert UNK_ID not in ids

    out = train_tokenizer(
        corpus, tmp_path / "cased", vocab_size=80, lowercase=False, show_progress=False
    )
    hf = AutoTokenizer.from_pretrained(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    distinct = ["café", "CAFÉ", "cafe", "Cafe"]
    assert len({tuple(hf(w, add_special_tokens=False)["input_ids"]) for w in distinct}) == 4
    cased = load_tokenizer(out)
    assert cased.encode(ACCENTED).ids == hf(ACCENTED)["input_ids"]
    assert cased.decode(cased.encode(ACCENTED).ids) == ACCENTED


def test_tiny_corpus_vocab_too_small(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("A tiny corpus.\nWith two lines.\n\nAnd a second document.\n")
    with pytest.raises(
        ValueError, match=r"vocabulary of only \d+ tokens, far fewer than vocab_size \(30522\)"
    ):
        train_tokenizer(f, tmp_path / "tok", show_progress=False)
    assert not (tmp_path / "tok").exists()  # nothing half-written


def test_reuse_and_refuse_different(default_corpus, tokenizer_dir, tmp_path):
    before = (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns
    assert (
        train_tokenizer(default_corpus, tokenizer_dir, vocab_size=2000, show_progress=False)
        == tokenizer_dir
    )
    assert (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns == before  # reused, not retrained
    assert json.loads((tokenizer_dir / "bertpt_tokenizer.json").read_text())["kind"] == "wordpiece"
    with pytest.raises(UserError, match=r"already holds a different tokenizer.*overwrite"):
        train_tokenizer(default_corpus, tokenizer_dir, vocab_size=1000, show_progress=False)
    copy = tmp_path / "t"
    train_tokenizer(default_corpus, copy, vocab_size=2000, show_progress=False)
    train_tokenizer(default_corpus, copy, vocab_size=1000, overwrite=True, show_progress=False)
    assert load_tokenizer(copy).get_vocab_size() == 1000


def test_cli(default_corpus, tmp_path, capsys):
    main([str(default_corpus), "--out", str(tmp_path / "t"), "--vocab-size", "800", "--cased"])
    assert "800 tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope.txt"), "--out", str(tmp_path / "u")])
    assert e.value.code == 2
    assert "corpus not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_concurrent_trainers_share_one_folder(default_corpus, tmp_path):
    """Two processes (say rank 0 of two nodes on shared storage) train into one folder at once:
    both succeed and the folder holds one complete tokenizer."""
    import multiprocessing as mp

    out = tmp_path / "tok"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_train_quietly, args=(str(default_corpus), str(out))) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary folder left
    assert load_tokenizer(out).get_vocab_size() == 1000


def test_folder_with_other_files_is_refused(default_corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        train_tokenizer(default_corpus, tmp_path, vocab_size=1000, show_progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _train_quietly(corpus: str, out: str) -> None:
    train_tokenizer(corpus, out, vocab_size=1000, show_progress=False)


def test_same_files_in_every_process(default_corpus, tmp_path):
    """Two processes with different hash seeds train on one corpus and write the same files,
    byte for byte (the tokenizers trainer broke ties in hash-map order: issue 11, item 10)."""
    env = {**os.environ, "PYTHONPATH": str(Path(bertpt.__file__).parents[1])}
    cli = [sys.executable, "-m", "bertpt.tokenizer", str(default_corpus), "--vocab-size", "2000"]
    outs = [tmp_path / "seed1", tmp_path / "seed2"]
    for seed, out in zip(("1", "2"), outs, strict=True):
        env["PYTHONHASHSEED"] = seed
        subprocess.run([*cli, "--out", str(out)], env=env, check=True, capture_output=True)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    assert {"tokenizer.json", "vocab.txt", "bertpt_tokenizer.json"} <= set(names)
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def _merged(tokens: list[int], pair: tuple[int, int], token: int) -> list[int]:
    """``tokens`` with each occurrence of ``pair`` replaced by ``token``, leftmost first."""
    out, i = [], 0
    while i < len(tokens):
        if tuple(tokens[i : i + 2]) == pair:
            out.append(token)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def reference_vocab(words, vocab_size, min_frequency, limit_alphabet, specials, prefix="##"):
    """The algorithm of bertpt/data/wordpiece.py's docstring, spelled out slowly: every pair
    counted afresh before every merge, no heap, no bookkeeping, no tokenizers library."""
    chars = Counter()
    for word, n in words.items():
        for c in word:
            chars[c] += n
    alphabet = sorted(sorted(chars, key=lambda c: (-chars[c], c))[:limit_alphabet])
    inner = {c for word in words for c in word[1:]}
    vocab = list(specials) + alphabet + [prefix + c for c in alphabet if c in inner]
    ids = {t: i for i, t in enumerate(vocab)}
    split = {
        w: [i for i in [ids.get(w[0]), *(ids.get(prefix + c) for c in w[1:])] if i is not None]
        for w in words
    }
    while len(vocab) < vocab_size:
        counts = Counter()
        for word, tokens in split.items():
            for pair in pairwise(tokens):
                counts[pair] += words[word]
        best = min(counts, key=lambda p: (-counts[p], p), default=None)  # ties: the lower ids
        if best is None or counts[best] < max(min_frequency, 1):
            break
        token = vocab[best[0]] + vocab[best[1]].removeprefix(prefix)
        if token not in ids:
            ids[token] = len(vocab)
            vocab.append(token)
        split = {word: _merged(tokens, best, ids[token]) for word, tokens in split.items()}
    return vocab


@pytest.mark.parametrize(
    "sentences, vocab_size, limit_alphabet, fills",
    [(800, 300, None, True), (120, 100_000, 20, False)],  # stops at the size; at min_frequency
)
def test_the_trainer_is_the_algorithm_its_docstring_describes(
    default_corpus, sentences, vocab_size, limit_alphabet, fills
):
    """train_vocab's heap and incremental pair counts give the vocabulary of the plain algorithm,
    ties included, on the words of a slice of the default corpus, in any order of the words."""
    tok = build_tokenizer()
    slice_ = islice(corpus_sentences(default_corpus), sentences)
    words = count_words(slice_, tok.normalizer, tok.pre_tokenizer)
    args = (vocab_size, 2, limit_alphabet, SPECIAL_TOKENS)
    ours = train_vocab(words, *args)
    assert ours == reference_vocab(words, *args)
    assert train_vocab(dict(reversed(words.items())), *args) == ours
    merges = len(ours) - len(train_vocab(words, 0, *args[1:]))
    assert merges > 50 and (len(ours) == vocab_size) is fills, len(ours)


@pytest.fixture(scope="module")
def corpus_words(default_corpus) -> dict[str, int]:
    """The uncased words of the default corpus and their counts, what tokenizer_dir learnt from."""
    tok = build_tokenizer()
    return count_words(corpus_sentences(default_corpus), tok.normalizer, tok.pre_tokenizer)


def test_the_vocabulary_is_made_of_the_corpus_words(tokenizer_dir, corpus_words):
    """What any WordPiece trainer gives, whatever its ties: the alphabet is every character of the
    corpus, each later token joins two earlier ones into a piece of a corpus word, no word of the
    corpus is [UNK], and the frequent words are whole tokens."""
    vocab = (tokenizer_dir / "vocab.txt").read_text().splitlines()
    ids = {t: i for i, t in enumerate(vocab)}
    chars = sorted({c for word in corpus_words for c in word})
    assert len(chars) <= 1000  # limit_alphabet: the alphabet allows every word
    inner = sorted({c for word in corpus_words for c in word[1:]})
    alphabet = [*SPECIAL_TOKENS, *chars, *("##" + c for c in inner)]
    assert vocab[: len(alphabet)] == alphabet
    starts = {w[:k] for w in corpus_words for k in range(1, len(w) + 1)}
    inside = {
        w[i:j] for w in corpus_words for i in range(1, len(w)) for j in range(i + 1, len(w) + 1)
    }
    for i, token in enumerate(vocab[len(alphabet) :], len(alphabet)):
        head, body = ("##", token[2:]) if token.startswith("##") else ("", token)
        assert body in (inside if head else starts), token
        assert any(
            ids.get(head + body[:k], i) < i and ids.get("##" + body[k:], i) < i
            for k in range(1, len(body))
        ), f"{token} is not two tokens before it"
    tok = load_tokenizer(tokenizer_dir)
    pieces = tok.encode_batch(list(corpus_words), add_special_tokens=False)
    assert not [w for w, e in zip(corpus_words, pieces, strict=True) if UNK_ID in e.ids]
    # A word met n times gives each of its pairs n occurrences, so a word left in pieces leaves a
    # pair met n times unmerged: here the most frequent such word is met 45 times, the 100th most
    # frequent word 406 times.
    top = sorted(corpus_words, key=lambda w: (-corpus_words[w], w))[:100]
    assert [w for w in top if len(tok.encode(w, add_special_tokens=False).ids) > 1] == []


def test_decoding_gives_the_normalized_text_back(tokenizer_dir, default_corpus):
    """No corpus sentence loses a character: decoded, it is the sentence lowercased and without
    accents, but for the spaces the pre-tokenizer puts around punctuation."""
    tok = load_tokenizer(tokenizer_dir)
    for sentence in islice(corpus_sentences(default_corpus), 0, None, 20):
        decoded = tok.decode(tok.encode(sentence).ids)
        assert decoded.split() and "".join(decoded.split()) == "".join(
            tok.normalizer.normalize_str(sentence).split()
        ), sentence


def test_ties_go_to_the_lower_ids_whatever_the_word_order():
    # Every pair occurs once: the pair of lower ids wins each tie, ## characters by code point.
    expected = ["[UNK]", "a", "b", "c", "d", "##a", "##b", "##d"]
    expected += ["ad", "cb", "##ba", "##bba", "adbba"]
    assert train_vocab({"cb": 1, "adbba": 1}, 30, 1, None, ["[UNK]"]) == expected
    assert train_vocab({"adbba": 1, "cb": 1}, 30, 1, None, ["[UNK]"]) == expected
    assert train_vocab({"cb": 1, "adbba": 1}, 9, 1, None, ["[UNK]"]) == expected[:9]


def test_alphabet_limit_and_min_frequency():
    # a and b tie for the fourth place: the lower code point stays, b leaves every word.
    words = {"ab": 1, "cd": 1, "a€b": 1, "€cd": 5}
    assert train_vocab(words, 30, 1, 4, ["[UNK]"]) == (
        ["[UNK]", "a", "c", "d", "€", "##c", "##d", "##€", "€c", "€cd", "a€", "cd"]
    )
    assert train_vocab(words, 30, 2, 4, ["[UNK]"])[-2:] == ["€c", "€cd"]
    # Overlapping pairs merge from the left, as in the library: ##a ##a ##a -> ##aa ##a.
    assert train_vocab({"aaaa": 3, "aaa": 2}, 30) == ["a", "##a", "##aa", "aaa", "aaaa"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_count_words_is_the_tokenizers_pipeline(default_corpus, lowercase):
    """Words counted per distinct space-separated piece are those of each sentence
    normalized and pre-tokenized whole, odd characters included."""
    tok = build_tokenizer(lowercase)
    odd = [
        "Ünïcödé ÉCOLE\u00a0naïve\tTAB, \u0301accent first; ΣΊΣΥΦΟΣ ends",
        "中文字符 mixed漢字 ctrl\x1csep\x00nul zero\u200bwidth \ufeffbom",
        "  spaces   around , punct!!  ",
        "",
    ]
    sentences = list(corpus_sentences(default_corpus)) + odd
    expected = Counter()
    for s in sentences:
        expected.update(
            w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(s))
        )
    assert count_words(sentences, tok.normalizer, tok.pre_tokenizer) == dict(expected)


@pytest.mark.parametrize("make", ["missing", "empty folder", "other folder"])
def test_load_a_path_that_is_no_tokenizer(tmp_path, make):
    path = tmp_path / "tok"
    if make != "missing":
        path.mkdir()
    if make == "other folder":
        (path / "config.json").write_text("{}")
    where, fix = re.escape(str(path)), "give a folder written by python -m bertpt.tokenizer"
    for call in (load_tokenizer, tokenizer_hash):
        with pytest.raises(UserError, match=rf"^(no tokenizer at )?{where}.* — {fix}") as e:
            call(path)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"version": "1.0", "trunc', "EOF while parsing"),
        (b"", "EOF while parsing"),
        (b"{}", "Model missing"),
        (b"\xff\xfe\x00binary", "not contain valid UTF-8"),
    ],
)
def test_load_a_corrupt_tokenizer_json(tmp_path, content, reason):
    (tmp_path / "tokenizer.json").write_bytes(content)
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        with pytest.raises(UserError, match=reason) as e:
            load_tokenizer(path)
        message = str(e.value)
        assert message.startswith(f"{tmp_path / 'tokenizer.json'} is not a valid tokenizer.json")
        assert "\n" not in message and "--overwrite" in message


def test_tokenizer_hash(tokenizer_dir, tmp_path):
    file = tokenizer_dir / "tokenizer.json"
    expected = hashlib.sha256(file.read_bytes()).hexdigest()
    assert tokenizer_hash(tokenizer_dir) == tokenizer_hash(file) == expected
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "tokenizer.json").write_bytes(file.read_bytes().replace(b"[MASK]", b"[MASX]"))
    assert tokenizer_hash(copy) != expected


def test_copy_tokenizer_copies_the_files_there_are(tokenizer_dir, tmp_path):
    copied = copy_tokenizer(tokenizer_dir, tmp_path)
    assert "tokenizer.json" in copied and "vocab.txt" in copied and "vocab.json" not in copied
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(copied)
    assert tokenizer_hash(tmp_path) == tokenizer_hash(tokenizer_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds none of the tokenizer files"):
        copy_tokenizer(tmp_path / "empty", tmp_path)


def test_bench_tokenizer(default_corpus, tmp_path, capsys):
    shutil.copy(default_corpus, tmp_path / "default_corpus.txt")  # reused, not built again
    bench_main(["--size-mb", "0.3", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"ratio bertpt / tokenizers: +\d+\.\d\d", out)
    corpus = tmp_path / "long_tail_0.3mb_seed0.txt"
    assert 0.3e6 <= corpus.stat().st_size < 0.4e6 and corpus.read_text().endswith("\n\n")
