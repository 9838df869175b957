"""Tokenized document store: token ids per sentence per document, cached on disk as Arrow.

A corpus is read once with :func:`bertpt.data.corpus.read_documents` into a ``datasets`` dataset
(``Dataset.from_generator``, so the raw text is never all in RAM), tokenized with a batched,
multi-process ``map`` (no special tokens) and kept as a memory-mapped Arrow file with one column
``sentences: list<list<int32>>``. The cache folder is named by a hash of the corpus fingerprint,
the tokenizer file and the settings, so a second run reuses it and a change of any rebuilds it.
Empty sentences and documents are dropped at build time: a store never holds one.

For the pair planner the store exposes flat numpy arrays over the *sentences*:
``sentence_lengths`` (S,), ``doc_offsets`` (D+1,) into them, and ``token_offsets`` (S+1,), the
start of every sentence in a virtual concatenation of all tokens. Token ids themselves are read
zero-copy from the Arrow buffers by :meth:`DocumentStore.tokens` (a ``[lo, hi)`` virtual range that
stays inside one document).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from bertpt.common.atomic import publish_dir, remove_stale_temps
from bertpt.common.errors import UserError
from bertpt.data.corpus import corpus_fingerprint, read_documents
from bertpt.data.tokenizer import resolve_tokenizer, tokenizer_hash, tokenizer_json

log = logging.getLogger(__name__)

# Bump when the on-disk layout or the tokenisation rule changes: old caches are then ignored.
STORE_VERSION = 1
DATA_GLOB = "tokens*.arrow"
META_FILE = "store.json"


def _list(feature):
    import datasets

    # datasets >= 4 names it List; Sequence (older releases) builds the same list type.
    return getattr(datasets, "List", datasets.Sequence)(feature)


def _features():
    import datasets

    return datasets.Features({"sentences": _list(_list(datasets.Value("int32")))})


class DocumentStore:
    """Documents of tokenized sentences over an Arrow table; optionally a view on some documents.

    ``doc_ids`` (a view from :meth:`split`) selects documents of the underlying table; all flat
    arrays and ``len`` refer to the view, while sentence and token positions stay global.
    """

    def __init__(
        self,
        table: pa.Table,
        path: Path | None = None,
        doc_ids: np.ndarray | None = None,
        meta: dict | None = None,
    ) -> None:
        self.table = table
        self.path = path
        self.meta = meta or {}
        self._index_chunks()
        self.doc_ids = None if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
        if self.doc_ids is not None:
            starts = self._all_doc_offsets[self.doc_ids]
            counts = self._all_doc_offsets[self.doc_ids + 1] - starts
            self.doc_starts, self.doc_counts = starts, counts
        else:
            self.doc_starts = self._all_doc_offsets[:-1]
            self.doc_counts = np.diff(self._all_doc_offsets)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_token_lists(cls, docs: Sequence[Sequence[Sequence[int]]]) -> DocumentStore:
        """An in-memory store from ``docs[d][s] = token ids`` (tests, small corpora).

        Empty sentences and documents are dropped, as :func:`build_store` does.
        """
        clean = [[list(map(int, s)) for s in d if len(s)] for d in docs]
        clean = [d for d in clean if d]
        typ = pa.list_(pa.list_(pa.int32()))
        return cls(pa.table({"sentences": pa.array(clean, type=typ)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> DocumentStore:
        """Memory-map a store folder written by :func:`build_store`."""
        import datasets

        path = Path(path)
        files = sorted(path.glob(DATA_GLOB))
        if not files or not (path / META_FILE).exists():
            raise FileNotFoundError(
                f"no complete document store in {path}: build it with build_store"
            )
        parts = [datasets.Dataset.from_file(str(f)) for f in files]
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        meta = json.loads((path / META_FILE).read_text())
        return cls(ds.data.table, path=path, meta=meta)

    def __reduce__(self):
        # DataLoader workers under spawn/forkserver: reopen the memory map, never copy the tokens.
        if self.path is not None:
            return (_reload, (str(self.path), self.doc_ids))
        return (DocumentStore, (self.table, None, self.doc_ids, self.meta))

    def _index_chunks(self) -> None:
        """Per Arrow chunk: zero-copy numpy views of token ids and sentence token offsets."""
        col = self.table.column("sentences")
        self._chunk_tokens: list[np.ndarray] = []
        self._chunk_base: list[int] = []  # token-buffer index of the chunk's first token
        sent_lengths, doc_counts, virtual_starts = [], [], [0]
        for chunk in col.chunks:
            if len(chunk) == 0:
                continue
            doc_off = chunk.offsets.to_numpy()  # (docs+1,) into the sentence child, not rebased
            sents = chunk.values
            tok_off = sents.offsets.to_numpy()[doc_off[0] : doc_off[-1] + 1]  # (sents+1,)
            self._chunk_tokens.append(sents.values.to_numpy(zero_copy_only=False))
            self._chunk_base.append(int(tok_off[0]))
            sent_lengths.append(np.diff(tok_off).astype(np.int32))
            doc_counts.append(np.diff(doc_off))
            virtual_starts.append(virtual_starts[-1] + int(tok_off[-1] - tok_off[0]))
        cat = np.concatenate
        self.sentence_lengths = cat(sent_lengths) if sent_lengths else np.zeros(0, np.int32)
        counts = cat(doc_counts) if doc_counts else np.zeros(0, np.int64)
        self._all_doc_offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.token_offsets = np.concatenate([[0], np.cumsum(self.sentence_lengths, dtype=np.int64)])
        self._chunk_virtual = np.asarray(virtual_starts, dtype=np.int64)  # (chunks+1,)

    # --- access -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.doc_starts)

    @property
    def num_sentences(self) -> int:
        return int(self.doc_counts.sum())

    @property
    def num_tokens(self) -> int:
        ends = self.token_offsets[self.doc_starts + self.doc_counts]
        return int((ends - self.token_offsets[self.doc_starts]).sum())

    @property
    def doc_token_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Virtual token ``[lo, hi)`` of every document of the view, each (D,) int64."""
        lo = self.token_offsets[self.doc_starts]
        return lo, self.token_offsets[self.doc_starts + self.doc_counts]

    def tokens(self, lo: int, hi: int) -> np.ndarray:
        """Token ids in the virtual range ``[lo, hi)``, which must lie within one document."""
        c = int(np.searchsorted(self._chunk_virtual, lo, side="right")) - 1
        base = self._chunk_base[c] - int(self._chunk_virtual[c])
        return self._chunk_tokens[c][base + lo : base + hi]

    def doc(self, i: int) -> list[np.ndarray]:
        """The sentences of document ``i`` of the view, as int32 arrays."""
        s0, n = int(self.doc_starts[i]), int(self.doc_counts[i])
        off = self.token_offsets
        return [self.tokens(int(off[s]), int(off[s + 1])) for s in range(s0, s0 + n)]

    def iter_token_chunks(self):
        """All token ids of the *underlying* table, one zero-copy array per Arrow chunk."""
        for c, toks in enumerate(self._chunk_tokens):
            n = int(self._chunk_virtual[c + 1] - self._chunk_virtual[c])
            yield toks[self._chunk_base[c] : self._chunk_base[c] + n]

    def split(self, val_fraction: float, seed: int = 0) -> tuple[DocumentStore, DocumentStore]:
        """Split by documents into (train, validation) views.

        Validation gets at least two documents when there are four or more, so next-sentence
        pairs can draw their random B from another validation document.
        """
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction ({val_fraction}) must be in (0, 1)")
        n = len(self)
        n_val = max(2 if n >= 4 else 1, round(n * val_fraction))
        if n - n_val < 1:
            raise UserError(f"cannot split {n} document(s) with val_fraction={val_fraction}")
        base = np.arange(n) if self.doc_ids is None else self.doc_ids
        perm = np.random.default_rng([seed, 0x5B17]).permutation(n)
        val, train = np.sort(base[perm[:n_val]]), np.sort(base[perm[n_val:]])
        views = (DocumentStore(self.table, self.path, ids, self.meta) for ids in (train, val))
        return tuple(views)  # type: ignore[return-value]


def _reload(path: str, doc_ids: np.ndarray | None) -> DocumentStore:
    store = DocumentStore.load(path)
    return store if doc_ids is None else DocumentStore(store.table, store.path, doc_ids, store.meta)


# --- building ------------------------------------------------------------------------------


def store_key(source, tokenizer_dir, format: str = "auto", text_column: str = "text") -> str:
    """The cache key: corpus fingerprint + sha256 of tokenizer.json + settings + layout version."""
    h = hashlib.sha256()
    h.update(corpus_fingerprint(source, format, text_column).encode())
    h.update(bytes.fromhex(tokenizer_hash(tokenizer_dir)))  # the bytes of its sha256
    h.update(json.dumps([STORE_VERSION, format, text_column]).encode())
    return h.hexdigest()[:20]


def _gen_documents(source, format: str, text_column: str):
    for doc in read_documents(source, format, text_column):
        yield {"text": doc}


_TOKENIZERS: dict[str, object] = {}


def _tokenize_batch(batch: dict, tokenizer_path: str) -> dict:
    """Batched map: documents of strings -> documents of id lists; empties dropped."""
    tok = _TOKENIZERS.get(tokenizer_path)
    if tok is None:  # once per worker process
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_path)
        tok.no_truncation()
        tok.no_padding()
        _TOKENIZERS[tokenizer_path] = tok
    docs = batch["text"]
    flat = [s for d in docs for s in d]
    ids = [e.ids for e in tok.encode_batch(flat, add_special_tokens=False)] if flat else []
    out, k = [], 0
    for d in docs:
        sents = [s for s in ids[k : k + len(d)] if s]
        k += len(d)
        if sents:
            out.append(sents)
    return {"sentences": out}


def _build_into(
    tmp: Path,
    source,
    tokenizer_dir: str | os.PathLike,
    key: str,
    format: str,
    text_column: str,
    num_proc: int,
    batch_size: int,
) -> None:
    """Read and tokenize ``source`` into the empty folder ``tmp``; ``store.json`` comes last."""
    import datasets

    raw = datasets.Dataset.from_generator(
        _gen_documents,
        features=datasets.Features({"text": _list(datasets.Value("string"))}),
        gen_kwargs={"source": source, "format": format, "text_column": text_column},
        # from_generator caches by the generator's hash, blind to file changes: a fresh
        # cache_dir per build forbids reusing a stale one.
        cache_dir=str(tmp / "raw"),
    )
    n_raw = len(raw)
    tokenized = raw.map(
        _tokenize_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["text"],
        features=_features(),
        fn_kwargs={"tokenizer_path": str(tokenizer_json(tokenizer_dir).resolve())},
        cache_file_name=str(tmp / "tokens.arrow"),
        new_fingerprint=f"tok-{key}",
        desc="Tokenizing documents",
    )
    n_docs = len(tokenized)
    del raw, tokenized
    shutil.rmtree(tmp / "raw", ignore_errors=True)
    meta = {
        "version": STORE_VERSION,
        "source": [str(s) for s in ([source] if isinstance(source, str | os.PathLike) else source)],
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "format": format,
        "text_column": text_column,
        "raw_documents": n_raw,
        "documents": n_docs,
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def build_store(
    source,
    tokenizer_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    format: str = "auto",
    text_column: str = "text",
    num_proc: int = 1,
    batch_size: int = 256,
) -> DocumentStore:
    """Tokenize ``source`` once into ``cache_dir/<key>`` and return the memory-mapped store.

    The build writes into a temporary folder beside the target and renames it when complete, so
    an interrupted build is never reused and concurrent builders do not see each other's files.
    The temporary folders that killed builds left in ``cache_dir`` are removed first.
    """
    key = store_key(source, tokenizer_dir, format, text_column)
    cache = Path(cache_dir).expanduser()
    target = cache / f"store-{key}"
    if (target / META_FILE).exists():
        log.info("document store cache hit: %s", target)
        return DocumentStore.load(target)

    # Any key: a build killed before the corpus or the tokenizer changed left one as well.
    remove_stale_temps(cache, "store-*")
    with publish_dir(target) as pub:
        _build_into(pub.tmp, source, tokenizer_dir, key, format, text_column, num_proc, batch_size)
    # Ours, or the same build that another process published first (load checks it is whole).
    store = DocumentStore.load(target)
    if len(store) == 0:
        raise UserError(
            f"corpus {source} yields no tokens — give a corpus with text, not only whitespace"
        )
    log.info("document store built: %s (%d documents)", target, len(store))
    return store


def store_for(
    files,
    tokenizer,
    cache_dir: str | os.PathLike | None = None,
    *,
    format: str = "auto",
    text_column: str = "text",
    num_proc: int = 1,
) -> DocumentStore:
    """:func:`build_store` with ``tokenizer`` as a folder, a tokenizer.json, or a loaded
    ``tokenizers.Tokenizer`` / fast ``transformers`` tokenizer; ``cache_dir`` defaults to
    ``$BERTPT_CACHE`` or ``~/.cache/bertpt``."""
    cache = Path(cache_dir or os.environ.get("BERTPT_CACHE", "~/.cache/bertpt")).expanduser()
    if isinstance(tokenizer, str | os.PathLike):
        tok_path = Path(tokenizer)
    else:  # a loaded tokenizer: the store key needs its file, so write it (content-named)
        text = resolve_tokenizer(tokenizer).to_str()
        tok_path = cache / f"tokenizer-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
        cache.mkdir(parents=True, exist_ok=True)
        if not tok_path.exists():
            tok_path.write_text(text, encoding="utf-8")
    return build_store(
        files, tok_path, cache, format=format, text_column=text_column, num_proc=num_proc
    )
