"""WordPiece training time, bertpt's trainer against the ``tokenizers`` trainer, side by side:
``python -m bertpt.bench_tokenizer --size-mb 50``.

Both read the same corpus through the same reader and train the same settings (30,522 tokens,
min_frequency 2, limit_alphabet 1000, uncased); the library uses its default threads. The corpus
is the offline default corpus repeated to ``--size-mb``, with a fifth of its words swapped for
made-up ones drawn from a Zipf law over blends of real words (the start of one and the end of
another; 40,000 a MB, two million at most), so that word types keep growing with the text as in
real corpora instead of stopping at the default corpus's nine thousand. It is written once under
``--dir`` (a temporary folder by default, never the source tree) and reused.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import trainers

from bertpt.common.atomic import temp_beside
from bertpt.data.corpus import build_default_corpus
from bertpt.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, corpus_sentences
from bertpt.data.wordpiece import count_words, train_vocab

SETTINGS = {"vocab_size": 30522, "min_frequency": 2, "limit_alphabet": 1000}
_SWAPPED_SHARE = 0.2
_MADE_UP_PER_MB, _MADE_UP_MAX = 40_000, 2_000_000


def long_tail_corpus(folder: str | os.PathLike, size_mb: float, seed: int = 0) -> Path:
    """A BERT-format corpus of ``size_mb`` MB with a long tail of word types (see the module
    docstring), written to ``folder`` once and reused; deterministic for a seed and Python."""
    folder = Path(folder)
    out = folder / f"long_tail_{size_mb:g}mb_seed{seed}.txt"
    if out.exists():
        return out
    text = build_default_corpus(folder / "default_corpus.txt").read_text(encoding="utf-8")
    rng = np.random.default_rng(seed)
    real = sorted(set(re.findall(r"[a-z]{3,}", text.lower())))
    made_up = _made_up_words(real, min(int(size_mb * _MADE_UP_PER_MB), _MADE_UP_MAX), rng)
    zipf_cdf = np.cumsum(1.0 / (np.arange(len(made_up)) + 10.0) ** 1.05)
    zipf_cdf /= zipf_cdf[-1]
    words = text.split(" ")
    swappable = np.array([w.isalpha() for w in words])
    capitalized = np.array([w[:1].isupper() for w in words])
    target, written = int(size_mb * 1e6), 0
    with temp_beside(out) as (fd, tmp):
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            while written < target:
                copy = list(words)
                swap = np.flatnonzero(swappable & (rng.random(len(words)) < _SWAPPED_SHARE))
                picks = np.searchsorted(zipf_cdf, rng.random(len(swap)))
                for at, pick in zip(swap.tolist(), picks.tolist(), strict=True):
                    copy[at] = made_up[pick].capitalize() if capitalized[at] else made_up[pick]
                part = " ".join(copy)
                end = part.find("\n\n", target - written)  # the last copy ends with a document
                if end >= 0:
                    part = part[: end + 2]
                f.write(part)
                written += len(part)
        os.replace(tmp, out)
    return out


def _made_up_words(real: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` blends of two real words: the start of one and the end of the other."""
    first, second = rng.integers(0, len(real), (2, n))
    cut_first, cut_second = rng.random((2, n))
    made_up = []
    for a, b, ca, cb in zip(first, second, cut_first, cut_second, strict=True):
        head, tail = real[a], real[b]
        made_up.append(head[: 1 + int(ca * len(head))] + tail[int(cb * (len(tail) - 1)) :])
    return made_up


def time_library(corpus: Path) -> tuple[float, set[str]]:
    """Seconds the ``tokenizers`` WordPiece trainer takes, and its vocabulary."""
    tok = build_tokenizer(lowercase=True)
    trainer = trainers.WordPieceTrainer(
        **SETTINGS,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    start = time.perf_counter()
    tok.train_from_iterator(corpus_sentences(corpus), trainer=trainer)
    return time.perf_counter() - start, set(tok.get_vocab())


def time_bertpt(corpus: Path) -> tuple[float, float, set[str], int]:
    """Seconds bertpt takes to count words and to merge, its vocabulary and the word types."""
    tok = build_tokenizer(lowercase=True)
    start = time.perf_counter()
    words = count_words(corpus_sentences(corpus), tok.normalizer, tok.pre_tokenizer)
    counted = time.perf_counter()
    vocab = train_vocab(words, special_tokens=SPECIAL_TOKENS, **SETTINGS)
    return counted - start, time.perf_counter() - counted, set(vocab), len(words)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.bench_tokenizer",
        description="Time WordPiece training: bertpt's deterministic trainer vs tokenizers'.",
    )
    parser.add_argument("--size-mb", type=float, default=50.0, help="corpus size (default 50)")
    parser.add_argument(
        "--dir",
        default=os.path.join(tempfile.gettempdir(), "bertpt-bench-tokenizer"),
        help="where the corpus is written once and reused (default: a temporary folder)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best counts")
    args = parser.parse_args(argv)

    corpus = long_tail_corpus(args.dir, args.size_mb)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), {os.cpu_count()} CPUs")
    library, ours = [], []
    for _ in range(args.repeat):  # alternate, so that a busy spell hits both
        seconds, lib_vocab = time_library(corpus)
        library.append(seconds)
        count_s, merge_s, our_vocab, types = time_bertpt(corpus)
        ours.append((count_s + merge_s, count_s, merge_s))
    lib_s = min(library)
    our_s, count_s, merge_s = min(ours)
    print(f"word types: {types:,}")
    print(f"tokenizers WordPieceTrainer: {lib_s:7.1f} s  {len(lib_vocab)} tokens")
    print(
        f"bertpt.data.wordpiece:            {our_s:7.1f} s  {len(our_vocab)} tokens "
        f"(count words {count_s:.1f} s, merges {merge_s:.1f} s)"
    )
    print(f"ratio bertpt / tokenizers:   {our_s / lib_s:7.2f}")
    print(f"shared tokens: {len(lib_vocab & our_vocab)} of {len(our_vocab)}")
