import logging
import socket
import subprocess
import sys

import datasets
import pytest
from sentencex import segment

from bertpt.data import corpus
from bertpt.data.corpus import (
    CorpusError,
    build_default_corpus,
    check_corpus,
    corpus_fingerprint,
    read_documents,
    split_sentences,
)

BERT_TEXT = (
    "First doc one.\nFirst doc two.\n\nSecond doc one.\nSecond doc two.\nSecond doc three.\n"
)


def test_bert_format(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(BERT_TEXT)
    docs = list(read_documents(f))
    assert docs == [
        ["First doc one.", "First doc two."],
        ["Second doc one.", "Second doc two.", "Second doc three."],
    ]


def test_bert_format_messy_whitespace(tmp_path):
    # Blank lines at the start and end, Windows line endings, runs of blank (and space-only) lines.
    f = tmp_path / "c.txt"
    f.write_bytes(b"\r\n\r\n  \r\nA one.\r\nA two.\r\n\r\n \r\n\r\nB one.  \r\n\r\n\r\n")
    assert list(read_documents(f, format="bert")) == [["A one.", "A two."], ["B one."]]


def test_lines_format_splits_sentences(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Dr. Smith went home. He slept well! Did he?\n\nAnother doc. It has two.\n")
    # auto sniffs a blank line between text lines as BERT format; ask for lines explicitly
    docs = list(read_documents(f, format="lines"))
    assert docs == [
        ["Dr. Smith went home.", "He slept well!", "Did he?"],
        ["Another doc.", "It has two."],
    ]
    g = tmp_path / "d.txt"
    g.write_text("One doc. Two sentences.\nSecond doc. Also two.\n")
    assert list(read_documents(g)) == [["One doc.", "Two sentences."], ["Second doc.", "Also two."]]


def test_folder_of_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("Bee one.\nStill bee one, wrapped. Bee two.")
    (tmp_path / "sub" / "a.txt").write_text("Ay one. Ay two.")
    (tmp_path / "ignored.md").write_text("Not text corpus.")
    docs = list(read_documents(tmp_path))
    assert docs == [["Bee one.", "Still bee one, wrapped.", "Bee two."], ["Ay one.", "Ay two."]]


def test_list_of_sources(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(BERT_TEXT)
    assert len(list(read_documents([f, f]))) == 4


def test_datasets_local_path(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"body": ["One here. Two here.", "", "Three. Four."], "id": [1, 2, 3]}
    )
    ds.save_to_disk(tmp_path / "ds")
    docs = list(read_documents(tmp_path / "ds", format="datasets", text_column="body"))
    assert docs == [["One here.", "Two here."], ["Three.", "Four."]]
    with pytest.raises(CorpusError, match=r"no column 'text'.*data.text_column"):
        list(read_documents(tmp_path / "ds", format="datasets"))


def test_datasets_data_files_folder(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train.jsonl").write_text(
        '{"text": "Alpha beta. Gamma delta."}\n{"text": "Epsilon zeta. Eta theta."}\n'
    )
    docs = list(read_documents(tmp_path / "j", format="datasets"))
    assert docs == [["Alpha beta.", "Gamma delta."], ["Epsilon zeta.", "Eta theta."]]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"corpus not found: .*missing\.txt"),
        (b"", r"is empty"),
        (b"\n\n  \n\r\n", r"is empty"),
        (b"\x7fELF\x02\x01\x00\x00binary", r"looks like a binary file"),
        (bytes(range(128, 256)) * 10, r"is not UTF-8 text"),
        (b"Only one document. With two sentences.\n", r"only one document"),
    ],
)
def test_bad_input_one_line_error(tmp_path, content, match):
    f = tmp_path / "missing.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(CorpusError, match=match) as e:
        check_corpus(f)
    assert "\n" not in str(e.value)
    if content is not None:
        assert str(f) in str(e.value)


def test_folder_without_txt(tmp_path):
    (tmp_path / "x.md").write_text("hello")
    with pytest.raises(CorpusError, match=r"holds no \.txt files"):
        check_corpus(tmp_path)


def test_unknown_format(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus format 'csv'"):
        list(read_documents(tmp_path, format="csv"))


def test_stray_bytes_are_replaced_and_counted(tmp_path, caplog):
    f = tmp_path / "c.txt"
    f.write_bytes(b"Good line \xff\xfe here.\nMore.\n\nSecond doc.\n")
    with caplog.at_level(logging.WARNING):
        docs = list(read_documents(f))
    assert docs[0][0] == "Good line \ufffd\ufffd here."
    assert "replaced 2 invalid UTF-8 byte(s)" in caplog.text
    check_corpus(f)  # not fatal


def test_split_sentences():
    # newlines inside a paragraph are wrapping, not boundaries; abbreviations do not end sentences
    got = split_sentences("  Dr. Smith wrote\nthis one. Wraps here. Next!  ")
    assert got == ["Dr. Smith wrote this one.", "Wraps here.", "Next!"]
    assert split_sentences(" \n ") == []


def test_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(BERT_TEXT)
    a = corpus_fingerprint(f)
    assert corpus_fingerprint(f) == a
    f.write_text(BERT_TEXT + "\nThird doc.\nMore.\n")
    assert corpus_fingerprint(f) != a


def test_default_corpus_is_deterministic_real_english(default_corpus, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    killed_build = tmp_path / f".again.txt.{socket.gethostname()}-{dead.pid}.x.tmp"
    killed_build.write_text("half a corpus")
    again = build_default_corpus(tmp_path / "again.txt")
    assert not killed_build.exists()  # what a killed build left is removed by the next one
    assert again.read_bytes() == default_corpus.read_bytes()
    size = default_corpus.stat().st_size
    assert 1_000_000 < size < 20_000_000
    docs = list(read_documents(default_corpus, format="bert"))
    assert len(docs) > 300
    sentences = [s for d in docs for s in d]
    assert len(sentences) > 10_000
    words = " ".join(sentences).lower().split()
    # real English prose: the commonest function words are there in bulk
    for w in ("the", "of", "a", "is", "to", "and"):
        assert words.count(w) > 1000, w
    assert build_default_corpus(default_corpus) == default_corpus  # existing file is kept


def test_concurrent_default_corpus_builds(default_corpus, tmp_path):
    """Two builders at once (a rank 0 per node): one file, as one build writes it, and the
    one that lost the race does not replace it (its mtime is part of the corpus fingerprint)."""
    import multiprocessing as mp

    out = tmp_path / "corpus.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=build_default_corpus, args=(str(out),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]
    assert out.read_bytes() == default_corpus.read_bytes()
    mtime = out.stat().st_mtime_ns
    build_default_corpus(out)
    assert out.stat().st_mtime_ns == mtime


QUOTED = 'He said "it works" and left. The (small) dog barked at Mr. Brown\'s cat. Ça va bien! '


def test_a_huge_line_is_read_in_linear_time(tmp_path, monkeypatch):
    """sentencex's work grows faster than its input (it pairs quotes across all of it): a huge
    line is read in linear time when no call gets more than a bounded amount of it and the
    calls' inputs add up to a bounded multiple of the line. Counted on the real sentencex, for
    lines of n and 4n characters, of sentences or of one run-on sentence without a full stop."""
    inputs: list[int] = []

    def counted(language: str, text: str):
        inputs.append(len(text))
        return segment(language, text)  # the real one

    monkeypatch.setattr(corpus, "segment", counted)
    run_on = "and then another word "

    def segmented(n: int, unit: str) -> list[int]:
        f = tmp_path / "line.txt"
        text = unit * (n // len(unit))
        f.write_text(text + "\nSecond doc. Two.\n", encoding="utf-8")
        inputs.clear()
        first, second = read_documents(f, format="lines")
        assert second == ["Second doc.", "Two."]
        if unit == QUOTED:
            assert len(first) == 3 * (n // len(QUOTED))
            assert first[:3] == [s.strip() for s in segment("en", QUOTED)]
        else:
            assert " ".join(first) == text.strip()
        return list(inputs)

    window = corpus.WINDOW_CHARS
    for unit in (QUOTED, run_on):
        one, four = segmented(500_000, unit), segmented(2_000_000, unit)
        assert max(one + four) <= 2 * window, (unit, max(one + four), window)
        assert sum(four) <= 2 * 2_000_000, (unit, sum(four))
        assert 3.5 < sum(four) / sum(one) < 4.5, (unit, sum(one), sum(four))


def test_long_text_gives_the_sentences_of_one_pass(default_corpus, monkeypatch):
    # Real prose, one line of ~800 kB; quotes and brackets left out, since sentencex pairs them
    # across the whole text (one stray apostrophe swallows the rest into one sentence).
    lines = default_corpus.read_text(encoding="utf-8").splitlines()
    prose = " ".join(s for s in lines if s and not set(s) & set("\"'`()[]{}"))
    assert len(prose) > 500_000
    one_pass = [s.strip() for s in segment("en", prose) if s.strip()]
    assert split_sentences(prose) == one_pass
    monkeypatch.setattr(corpus, "WINDOW_CHARS", 1000)  # every window boundary in a sentence
    text = QUOTED * 2000
    assert split_sentences(text) == [s.strip() for s in segment("en", text) if s.strip()]
    no_spaces = "漢字かな交じり文" * 1000  # no space to cut at: cut between characters
    assert "".join(split_sentences(no_spaces)) == no_spaces


def test_progress_bar_on_slow_passes_only(tmp_path, monkeypatch, capsys):
    f = tmp_path / "c.txt"
    f.write_text(BERT_TEXT)
    list(read_documents(f))
    check_corpus(f)
    assert capsys.readouterr().err == ""  # a quick pass stays quiet
    monkeypatch.setattr(corpus, "PROGRESS_DELAY_S", 0)
    list(read_documents([f, f]))
    err = capsys.readouterr().err
    assert "reading corpus" in err and f"{2 * f.stat().st_size}/{2 * f.stat().st_size}" in err
