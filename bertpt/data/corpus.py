"""Read corpora into documents of sentences, and build the offline default corpus.

Every reader streams: it holds one document at a time, so memory does not grow with the corpus.
A document is a ``list[str]`` of sentences with surrounding whitespace removed and no empty entry.

Formats (``format=``):

- ``bert``: Google's format, one sentence per line and a blank line between documents.
- ``lines``: one document per line, split into sentences.
- ``files``: a folder of ``.txt`` files, one document per file, split into sentences.
- ``datasets``: a Hugging Face ``datasets`` dataset (a local folder, or a Hub name when online),
  one document per row of ``text_column``, split into sentences.
- ``auto``: a folder is ``files``; a file with a blank line between two text lines is ``bert``,
  otherwise ``lines``; a path that does not exist is an error (ask for ``datasets`` explicitly).

Sentences are split by ``sentencex`` (Wikimedia): maintained, rule-based for ~300 languages,
compiled, and it ships its rules in the wheel, so nothing is downloaded at run time (NLTK's punkt
needs a data download; pysbd has had no release since 2021).
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import io
import logging
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from sentencex import segment
from tqdm import tqdm

from bertpt.common.atomic import publish, temp_beside
from bertpt.common.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("auto", "bert", "lines", "files", "datasets")
Source = str | os.PathLike | Iterable[str | os.PathLike]

_SNIFF_BYTES = 1 << 16
WINDOW_CHARS = 1 << 16  # text segmented at once; a window's work is bounded (split_sentences)
PROGRESS_DELAY_S = 5.0  # a pass over the corpus shows a progress bar once it takes this long


class CorpusError(UserError):
    """A corpus that cannot be used; the message names the file and what to do."""


class _BadByteCounter:
    """Replaces invalid UTF-8 bytes with U+FFFD and counts them, so a stray byte is not fatal."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, err: UnicodeDecodeError) -> tuple[str, int]:
        self.count += err.end - err.start
        return "\ufffd" * (err.end - err.start), err.end


def _check_text_file(path: Path) -> None:
    """Fail fast on a file that is not text: NUL bytes or mostly undecodable bytes."""
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path} — check the path")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        return
    if b"\x00" in head:
        raise CorpusError(
            f"{path} looks like a binary file, not text (it holds NUL bytes) "
            "— remove it from the corpus or convert it to UTF-8 text"
        )
    bad = len(head) - len(head.decode("utf-8", errors="ignore").encode("utf-8"))
    if bad > 0.3 * len(head):
        raise CorpusError(
            f"{path} is not UTF-8 text ({bad} of its first {len(head)} bytes are invalid) — "
            "convert it to UTF-8 (e.g. iconv -t utf-8) or remove it from the corpus"
        )


class _Counted(io.RawIOBase):
    """A binary file that advances a progress bar by the bytes read from it."""

    def __init__(self, f: io.RawIOBase, bar: tqdm) -> None:
        self._f, self._bar = f, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        n = self._f.readinto(buffer)
        self._bar.update(n or 0)
        return n


def _text_lines(path: Path, bar: tqdm | None = None) -> Iterator[str]:
    """Lines of a text file without line endings; ``\\r\\n`` and ``\\r`` are handled.
    ``bar`` advances by the bytes read."""
    _check_text_file(path)
    counter = _BadByteCounter()
    name = f"bertpt-count-{id(counter)}"
    codecs.register_error(name, counter)
    # What open(path, encoding=...) builds, with the byte counter under the buffer.
    with open(path, "rb", buffering=0) as raw:
        buffered = io.BufferedReader(
            raw if bar is None else _Counted(raw, bar), buffer_size=1 << 20
        )
        with io.TextIOWrapper(buffered, encoding="utf-8", errors=name, newline=None) as f:
            for line in f:
                yield line.rstrip("\n")
    if counter.count:
        log.warning("%s: replaced %d invalid UTF-8 byte(s) with U+FFFD", path, counter.count)


def _window_end(text: str, start: int, size: int) -> int:
    """Where a window of about ``size`` characters from ``start`` ends: at the last space in
    it, so no word is cut, or after ``size`` characters in text without spaces."""
    if start + size >= len(text):
        return len(text)
    space = text.rfind(" ", start + 1, start + size)
    return space if space > 0 else start + size


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Split running text into sentences; whitespace runs (newlines included) become one space.

    sentencex's time grows faster than the text (quotes and brackets are matched across all of
    it: a 4 MB line takes seconds, 20 MB minutes), so text is segmented one window of
    ``WINDOW_CHARS`` at a time: linear in its length. The last sentence of a window starts the
    next one, so a window boundary splits no sentence shorter than a window.
    """
    text = " ".join(text.split())
    sentences: list[str] = []
    carry, start = "", 0  # segments concatenate to their input: carry + text[start:] is the rest
    while start < len(text):
        end = _window_end(text, start, WINDOW_CHARS)
        segments = list(segment(language, carry + text[start:end]))
        carry = segments.pop() if end < len(text) else ""
        if len(carry) >= WINDOW_CHARS:  # a run-on "sentence": bound the work, cut it here
            segments.append(carry)
            carry = ""
        sentences += segments
        start = end
    return [s for s in (s.strip() for s in sentences) if s]


def _sniff_format(path: Path) -> str:
    """``bert`` when a blank line separates two text lines near the start of the file."""
    seen_text = seen_blank = False
    for i, line in enumerate(_text_lines(path)):
        if line.strip():
            if seen_text and seen_blank:
                return "bert"
            seen_text = True
        elif seen_text:
            seen_blank = True
        if i > 100_000:
            break
    return "lines"


def _expand(source: Source) -> list[Path | str]:
    if isinstance(source, str | os.PathLike):
        return [source]
    return list(source)


def _txt_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(
            f"corpus folder {folder} holds no .txt files — add some or point at a file"
        )
    return files


def _bert_documents(path: Path, bar: tqdm | None = None) -> Iterator[list[str]]:
    doc: list[str] = []
    for line in _text_lines(path, bar):
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _line_documents(path: Path, language: str, bar: tqdm | None = None) -> Iterator[list[str]]:
    for line in _text_lines(path, bar):
        if doc := split_sentences(line, language):
            yield doc


def _path_documents(
    fmt: str, path: Path, language: str, bar: tqdm | None = None
) -> Iterator[list[str]]:
    """The documents of one text file in format ``fmt`` (``files``: the whole file is one)."""
    if fmt == "bert":
        yield from _bert_documents(path, bar)
    elif fmt == "lines":
        yield from _line_documents(path, language, bar)
    elif doc := split_sentences("\n".join(_text_lines(path, bar)), language):
        yield doc


def _load_dataset(name: str, split: str):
    import datasets

    path = Path(name)
    saved = ("state.json", "dataset_dict.json")  # what Dataset(Dict).save_to_disk writes
    if path.is_dir() and any((path / f).exists() for f in saved):
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    # A local folder of data files, or a Hub name (streamed, so a large corpus is never in RAM).
    return datasets.load_dataset(name, split=split, streaming=not path.exists())


def _dataset_documents(name: str, text_column: str, split: str, language: str):
    ds = _load_dataset(name, split)
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise CorpusError(
            f"dataset {name} has no column {text_column!r} (it has {columns}) — "
            "set data.text_column to one of them"
        )
    for row in tqdm(ds, desc=f"reading {name}", unit="doc", delay=PROGRESS_DELAY_S):
        if doc := split_sentences(row[text_column] or "", language):
            yield doc


def _resolve(item: str | os.PathLike, fmt: str) -> tuple[str, Path | str]:
    """Pick the format of one source item, failing early on a path that does not exist."""
    if fmt not in FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r} — use one of {', '.join(FORMATS)}")
    if fmt == "datasets":
        return fmt, str(item)
    path = Path(item).expanduser()
    if not path.exists():
        raise CorpusError(
            f"corpus not found: {path} — give a text file, a folder of .txt files, "
            "or data.format=datasets for a datasets name"
        )
    if fmt == "auto":
        fmt = "files" if path.is_dir() else _sniff_format(path)
    return fmt, path


def read_documents(
    source: Source,
    format: str = "auto",
    text_column: str = "text",
    split: str = "train",
    language: str = "en",
) -> Iterator[list[str]]:
    """Stream the documents of ``source`` (a path, a list of paths, or a datasets name).

    A progress bar (stderr) appears when the pass takes longer than ``PROGRESS_DELAY_S``.
    """
    resolved = [_resolve(item, format) for item in _expand(source)]
    files = {i: _item_files(item) for i, (fmt, item) in enumerate(resolved) if fmt != "datasets"}
    size = sum(f.stat().st_size for fs in files.values() for f in fs)
    bar = tqdm(
        total=size,
        desc="reading corpus",
        unit="B",
        unit_scale=True,
        delay=PROGRESS_DELAY_S,
        disable=not files,
    )
    with bar:
        for i, (fmt, item) in enumerate(resolved):
            if fmt == "datasets":
                yield from _dataset_documents(str(item), text_column, split, language)
            for path in files.get(i, []):
                yield from _path_documents(fmt, path, language, bar)


def _item_files(item: Path | str) -> list[Path]:
    """The text files of one resolved source item: itself, or a folder's ``.txt`` files."""
    return _txt_files(Path(item)) if Path(item).is_dir() else [Path(item)]


def corpus_files(source: Source, format: str = "auto") -> list[Path]:
    """The files behind ``source`` (empty for a datasets name)."""
    resolved = (_resolve(i, format) for i in _expand(source))
    return [f for fmt, item in resolved if fmt != "datasets" for f in _item_files(item)]


def check_corpus(source: Source, format: str = "auto", text_column: str = "text") -> None:
    """Raise a one-line CorpusError for a corpus that cannot work, before any long work starts.

    Checks that every file exists and is text, and that at least two non-empty documents exist
    (next-sentence prediction draws negatives from another document). Reads only until it has
    seen two documents.
    """
    for path in corpus_files(source, format):
        _check_text_file(path)
    docs = 0
    for _ in read_documents(source, format, text_column):
        docs += 1
        if docs == 2:
            return
    name = source if isinstance(source, str | os.PathLike) else ", ".join(map(str, source))
    if docs == 0:
        raise CorpusError(f"corpus {name} is empty: it holds no text — give a corpus with text")
    raise CorpusError(
        f"corpus {name} holds only one document, and next-sentence prediction needs two — "
        "separate documents with a blank line (BERT format), or use one file per document"
    )


def corpus_fingerprint(source: Source, format: str = "auto", text_column: str = "text") -> str:
    """A short hash of the corpus files (path, size, mtime) or the datasets name."""
    h = hashlib.sha256(f"{format}|{text_column}".encode())
    for fmt, item in (_resolve(i, format) for i in _expand(source)):
        if fmt == "datasets":
            h.update(f"datasets:{item}".encode())
            continue
        for f in _item_files(item):
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# --- the offline default corpus: docstrings of the standard library ---------------------------

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=~*]{3,}\s*$|:\w+:)")


def prose_paragraphs(doc: str) -> Iterator[str]:
    """Paragraphs of a docstring that read as prose: no doctests, code blocks, tables or rules."""
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(_CODE_LINE.match(line) for line in lines):
            continue
        if len(lines) > 1 and all(line.startswith(" ") for line in lines[1:]) and ":" in lines[0]:
            continue  # a definition list ("name: description") or an indented block
        text = " ".join(para.split())
        letters = sum(c.isalpha() or c == " " for c in text)
        if len(text) >= 20 and letters >= 0.8 * len(text) and text[0].isupper():
            yield text


def named_docstrings(path: Path) -> Iterator[tuple[str, str]]:
    """(qualified name in the file, docstring) of a Python file's module ("" names it), classes
    and functions, in the default corpus's order; nothing for a file that does not parse."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return
    names: dict[ast.AST, str] = {tree: ""}
    for node in ast.walk(tree):  # breadth first: a node is named before its children
        for child in ast.iter_child_nodes(node):
            named = isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            prefix = names[node]
            names[child] = (f"{prefix}.{child.name}" if prefix else child.name) if named else prefix
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef))]
    for node in nodes:
        if doc := ast.get_docstring(node, clean=True):
            yield names[node], doc


def stdlib_files() -> list[Path]:
    """The running interpreter's standard-library sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def _topic_documents() -> Iterator[list[str]]:
    """The language reference that pydoc carries (``pydoc_data.topics``), one topic a document."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        return
    for name in sorted(topics):
        paragraphs = prose_paragraphs(topics[name].replace("*", "").replace("=", ""))
        if len(doc := [s for p in paragraphs for s in split_sentences(p)]) >= 2:
            yield doc


def default_documents() -> Iterator[list[str]]:
    """Documents from the standard library's text: one per module (its docstrings in source
    order, so consecutive sentences belong together) and one per pydoc reference topic."""
    for path in tqdm(stdlib_files(), desc="default corpus", unit="file", mininterval=1.0):
        doc = [
            s
            for _, d in named_docstrings(path)
            for p in prose_paragraphs(d)
            for s in split_sentences(p)
        ]
        if len(doc) >= 2:
            yield doc
    yield from _topic_documents()


def build_default_corpus(out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the default corpus in BERT format (deterministic for a given Python); return its path.

    An existing file is kept unless ``overwrite``: the build is a pure function of the interpreter.
    The file is written to a temporary name and renamed, so a crash never leaves half a corpus.
    """
    out = Path(out_path)
    if out.exists() and not overwrite:
        log.info("default corpus already at %s", out)
        return out
    docs = sentences = 0
    with temp_beside(out) as (fd, tmp):
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for doc in default_documents():
                f.write("\n".join(doc) + "\n\n")
                docs += 1
                sentences += len(doc)
        # Several builders at once (a rank 0 per node on shared storage): the first one in wins
        # and the file is never replaced under a reader, nor its mtime changed.
        publish(tmp, out, replace=overwrite)
    log.info("wrote %s: %d documents, %d sentences", out, docs, sentences)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bertpt.corpus",
        description="Build the offline default corpus (stdlib docstrings) in BERT format.",
    )
    parser.add_argument("out", nargs="?", default="data/corpus.txt", help="output file")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build_default_corpus(args.out, overwrite=args.overwrite)
    print(f"default corpus: {path} ({path.stat().st_size / 1e6:.1f} MB)")
