"""Throughput of the data pipeline on synthetic data: ``python -m bertpt.bench_data``.

Prints sequences per second of the masking collator (batch 32 and 256, both mask modes, with and
without whole-word masking) and of the pair builder (epoch planning and ``__getitem__``), in one
process with torch's default thread count. Training never waits on data when these exceed the
model's sequences per second by a wide margin (BERT-base on one H100 trains ~2-3k seq/s at 128).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bertpt.data.collator import MaskingCollator
from bertpt.data.pairs import NSPPairDataset
from bertpt.data.store import DocumentStore

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "do", "ga", "hu", "bi"]


def synthetic_corpus(path: str | Path, num_docs: int = 200, seed: int = 0) -> Path:
    """Write a BERT-format corpus of made-up words (a Zipf-like vocabulary, 1-12 sentences a
    document, some very long sentences): for tests and benchmarks that need real files."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(_SYLLABLES, rng.integers(1, 4))) for _ in range(600)]
    weights = 1 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    lines = []
    for _ in range(num_docs):
        for _ in range(rng.integers(1, 13)):
            n = rng.integers(3, 25) if rng.random() > 0.02 else rng.integers(150, 300)
            sentence = " ".join(rng.choice(words, n, p=weights))
            lines.append(sentence[0].upper() + sentence[1:] + ".")
        lines.append("")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _items(n: int, seq_len: int, vocab: int, rng) -> list[dict]:
    """Pairs as the dataset yields them: [CLS] A [SEP] B [SEP], mostly full length."""
    items = []
    for i in range(n):
        L = seq_len if rng.random() > 0.1 else int(rng.integers(8, seq_len))
        la = int(rng.integers(1, L - 3))
        ids = rng.integers(5, vocab, L).astype(np.int64)
        ids[[0, la + 1, L - 1]] = (2, 3, 3)
        types = np.zeros(L, np.int64)
        types[la + 2 :] = 1
        items.append(
            {"input_ids": ids, "token_type_ids": types, "next_sentence_label": i % 2, "index": i}
        )
    return items


def _rate(fn, n_items: int, min_time: float, windows: int = 5) -> float:
    """Items per second: the best of ``windows`` timing windows (robust to a busy machine)."""
    fn()  # warm-up
    best = 0.0
    for _ in range(windows):
        done, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_time / windows:
            fn()
            done += n_items
        best = max(best, done / elapsed)
    return best


def bench_collator(seq_len: int = 128, vocab: int = 30522, min_time: float = 1.0) -> list[tuple]:
    rng = np.random.default_rng(0)
    cont = np.arange(vocab // 2, vocab)  # half the vocabulary as ## pieces, for wwm
    rows = []
    for batch_size in (32, 256):
        items = _items(batch_size, seq_len, vocab, rng)
        for mode in ("independent", "exact"):
            for wwm in (False, True):
                col = MaskingCollator(
                    vocab_size=vocab, mask_mode=mode, whole_word_mask=wwm, continuation_ids=cont
                )
                rate = _rate(lambda c=col, x=items: c(x), batch_size, min_time)
                rows.append((batch_size, mode, wwm, rate))
    return rows


def bench_pairs(docs: int = 20_000, sents: int = 20, seq_len: int = 128, min_time: float = 1.0):
    """Planning time of one epoch and random-access pairs per second."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 40, docs * sents)
    flat = rng.integers(5, 30522, int(lengths.sum())).astype(np.int32)
    bounds = np.split(flat, np.cumsum(lengths)[:-1])
    store = DocumentStore.from_token_lists(
        [bounds[d * sents : (d + 1) * sents] for d in range(docs)]
    )
    t0 = time.perf_counter()
    ds = NSPPairDataset(store, max_seq_length=seq_len)
    plan_s = time.perf_counter() - t0
    idx = rng.permutation(len(ds))
    pos = iter(range(10**12))

    def read_batch():
        for _ in range(256):
            ds[int(idx[next(pos) % len(idx)])]

    return len(store), store.num_sentences, len(ds), plan_s, _rate(read_batch, 256, min_time)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bertpt.bench_data", description=__doc__)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    import torch

    print(f"torch threads: {torch.get_num_threads()}, sequence length {args.seq_len}")
    print(f"{'collator':<10}{'batch':>6}{'mode':>13}{'wwm':>6}{'seq/s':>12}")
    for batch_size, mode, wwm, rate in bench_collator(args.seq_len, min_time=args.min_time):
        print(f"{'':<10}{batch_size:>6}{mode:>13}{wwm!s:>6}{rate:>12,.0f}")
    docs, sents, pairs, plan_s, rate = bench_pairs(seq_len=args.seq_len, min_time=args.min_time)
    print(
        f"pairs: {docs:,} docs, {sents:,} sentences -> {pairs:,} pairs/epoch; "
        f"epoch plan {plan_s:.2f} s ({sents / plan_s:,.0f} sentences/s); "
        f"__getitem__ {rate:,.0f} pairs/s"
    )
