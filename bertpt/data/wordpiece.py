"""A WordPiece vocabulary trainer that gives the same vocabulary in every run.

The ``tokenizers`` trainer (BPE merges under a WordPiece model) numbers the ``##`` continuation
characters in the order of a hash map with a random per-process seed and breaks ties between
equally frequent pairs by those numbers, so two runs on one corpus can give two vocabularies
(huggingface/tokenizers#1794). This is the same algorithm with every order fixed:

1. words: the corpus through the tokenizer's own normalizer and pre-tokenizer, counted;
2. alphabet: the ``limit_alphabet`` most frequent characters (ties: the lower code point) in
   code-point order, then in the same order ``##c`` for those that occur after a word's start;
3. merges: join the most frequent adjacent pair of tokens, ``a`` + ``##b`` -> ``ab`` and
   ``##a`` + ``##b`` -> ``##ab``, until the vocabulary holds ``vocab_size`` tokens or no pair
   occurs ``min_frequency`` times. Ties go to the pair of lower ids, as in the library.

Up to those ties the vocabulary is the library's: on the default corpus and on the 50 MB corpus
of :mod:`bertpt.bench_tokenizer` all but a few tokens in 30,522 are the same, and words split
into as many tokens. Within this module a token is one character, ``chr(id)``, so a word is a
``str``, a pair a two-character ``str`` that sorts as the library's id pairs do, and a merge in
a word is ``str.replace`` (leftmost occurrences first, as the library merges), which runs in C.

Imports only the standard library and tqdm; the normalizer and pre-tokenizer come in as objects.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from operator import add, itemgetter
from typing import Protocol

from tqdm import tqdm


class _Normalizer(Protocol):
    def normalize_str(self, sequence: str) -> str: ...


class _PreTokenizer(Protocol):
    def pre_tokenize_str(self, sequence: str) -> list[tuple[str, tuple[int, int]]]: ...


def count_words(
    sentences: Iterable[str],
    normalizer: _Normalizer,
    pre_tokenizer: _PreTokenizer,
    show_progress: bool = False,
) -> dict[str, int]:
    """How often each word occurs: the pieces ``pre_tokenizer`` makes of normalized sentences.

    Normalizing and pre-tokenizing cost far more than counting, so they run once per distinct
    space-separated piece of text instead of once per occurrence, on many pieces a call. That is
    exact for BERT's normalizer and pre-tokenizer: they act on each character alone and a space
    always ends a word.
    """
    pieces: Counter[str] = Counter()
    progress = {"mininterval": 1.0, "delay": 5, "disable": not show_progress}
    for batch in _batched(tqdm(sentences, "count words", unit=" sentences", **progress), 10_000):
        pieces.update(" ".join(batch).split(" "))
    words: Counter[str] = Counter()
    bar = tqdm(total=len(pieces), desc="normalize words", unit=" pieces", **progress)
    # Pieces that occur equally often go through together, so a call's words share one weight.
    for n, group in _group_by_count(pieces).items():
        for chunk in _batched(group, 50_000):
            splits = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(" ".join(chunk)))
            for word, k in Counter(map(itemgetter(0), splits)).items():
                words[word] += k * n
            bar.update(len(chunk))
    bar.close()
    return dict(words)


def train_vocab(
    word_counts: Mapping[str, int],
    vocab_size: int,
    min_frequency: int = 0,
    limit_alphabet: int | None = None,
    special_tokens: Iterable[str] = (),
    prefix: str = "##",
    show_progress: bool = False,
) -> list[str]:
    """The WordPiece vocabulary of ``word_counts``, in id order: special tokens, alphabet,
    ``prefix`` + alphabet, then one token per merge. A pure function of its arguments."""
    bar = tqdm(
        total=vocab_size,
        desc="train vocabulary",
        unit=" tokens",
        mininterval=1.0,
        delay=5,
        disable=not show_progress,
    )
    chars = _char_counts(word_counts)
    alphabet = _alphabet(chars, limit_alphabet)
    vocab = _initial_vocab(word_counts, alphabet, special_tokens, prefix)
    ids = {token: i for i, token in enumerate(vocab)}
    merges = _Merges(*_encode_words(word_counts, chars, ids, prefix))
    bar.update(len(vocab))
    while len(vocab) < vocab_size:
        best = merges.pop_best()
        if best is None or best[1] < max(min_frequency, 1):
            break
        first, second = (vocab[ord(c)] for c in best[0])
        token = first + second.removeprefix(prefix)
        if token not in ids:  # two different pairs can spell one token
            ids[token] = len(vocab)
            vocab.append(token)
            bar.update()
        merges.merge(best[0], chr(ids[token]))
    bar.close()
    return vocab


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _group_by_count(counts: Mapping[str, int]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for key, n in counts.items():
        groups[n].append(key)
    return groups


def _char_counts(word_counts: Mapping[str, int]) -> Counter[str]:
    chars: Counter[str] = Counter()
    for n, group in _group_by_count(word_counts).items():
        for c, k in Counter("".join(group)).items():
            chars[c] += k * n
    return chars


def _alphabet(chars: Counter[str], limit: int | None) -> list[str]:
    """The ``limit`` most frequent characters (ties: the lower code point), by code point."""
    return sorted(sorted(chars, key=lambda c: (-chars[c], c))[:limit])


def _initial_vocab(
    word_counts: Mapping[str, int], alphabet: list[str], special_tokens: Iterable[str], prefix: str
) -> list[str]:
    inner = set("".join(word[1:] for word in word_counts))
    continuing = [prefix + c for c in alphabet if c in inner]
    specials = list(dict.fromkeys(special_tokens))
    return specials + [t for t in alphabet + continuing if t not in specials]


def _encode_words(
    word_counts: Mapping[str, int], chars: Iterable[str], ids: dict[str, int], prefix: str
) -> tuple[list[str], list[int]]:
    """Words of two tokens or more as strings of token characters, and their counts.

    A word's first character is its own token, the others ``prefix`` + character; characters
    outside the alphabet are dropped, as the library does."""
    start = {ord(c): chr(ids[c]) if c in ids else None for c in chars}
    inside = {ord(c): chr(ids[prefix + c]) if prefix + c in ids else None for c in chars}
    words, counts = [], []
    for word, n in word_counts.items():
        encoded = word[:1].translate(start) + word[1:].translate(inside)
        if len(encoded) > 1:
            words.append(encoded)
            counts.append(n)
    return words, counts


def _pairs(word: str) -> Iterator[str]:
    return map(add, word, word[1:])


class _Merges:
    """Words as strings of token characters, how often each adjacent pair occurs, which words
    hold it, and a max-heap of pairs by count whose stale entries are refreshed when popped."""

    def __init__(self, words: list[str], counts: list[int]) -> None:
        self.words, self.counts = words, counts
        self.pair_counts: dict[str, int] = defaultdict(int)
        # Word indices per pair; may hold a word twice, or one the pair has since left.
        self.where: dict[str, list[int]] = defaultdict(list)
        for i, (word, n) in enumerate(zip(words, counts, strict=True)):
            for pair in _pairs(word):
                self.pair_counts[pair] += n
                self.where[pair].append(i)
        self.heap = [(-n, pair) for pair, n in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def pop_best(self) -> tuple[str, int] | None:
        """The most frequent pair (ties: the lower ids) and its count, or None."""
        while self.heap:
            negative, pair = heapq.heappop(self.heap)
            n = self.pair_counts.get(pair, 0)
            if n == -negative:
                return pair, n
            if n > 0:  # counted before a merge changed it: back in at its count now
                heapq.heappush(self.heap, (-n, pair))
        return None

    def merge(self, pair: str, token: str) -> None:
        """Replace ``pair`` by ``token`` in every word and recount the pairs around it."""
        del self.pair_counts[pair]
        formed: dict[str, None] = {}  # pairs that hold ``token``; a dict keeps a fixed order
        for i in dict.fromkeys(self.where.pop(pair)):
            word = self.words[i]
            at = word.find(pair)
            if at < 0:
                continue  # an earlier merge took the pair out of this word
            n = self.counts[i]
            if word.find(pair, at + 2) < 0:
                # Once, as in most words: only the pairs with its two neighbours change.
                self.words[i] = word[:at] + token + word[at + 2 :]
                if at:
                    self._move(word[at - 1 : at + 1], word[at - 1] + token, pair, n, i, formed)
                if at + 2 < len(word):
                    self._move(word[at + 1 : at + 3], token + word[at + 2], pair, n, i, formed)
            else:
                merged = self.words[i] = word.replace(pair, token)
                for old in _pairs(word):
                    if old != pair:
                        self.pair_counts[old] -= n
                for new in _pairs(merged):
                    self.pair_counts[new] += n
                    if token in new:
                        self.where[new].append(i)
                        formed[new] = None
        for new in formed:
            if (n := self.pair_counts[new]) > 0:
                heapq.heappush(self.heap, (-n, new))

    def _move(self, old: str, new: str, merged: str, n: int, i: int, formed: dict) -> None:
        """Word ``i`` (count ``n``) now holds pair ``new`` where it held ``old``."""
        if old != merged:  # the merged pair's count is gone already
            self.pair_counts[old] -= n
        self.pair_counts[new] += n
        self.where[new].append(i)
        formed[new] = None
