"""Labelled text-classification tasks for the fine-tuning probe (``bertpt.probing``).

A task is named by ``--task``:

- ``docstrings`` (built in, no network): docstrings of the standard library labelled with the
  top-level module or package they come from (``email``, ``asyncio``, ...), the most frequent
  ones, balanced. It is the text of the default corpus (the pretraining saw the docstrings, never
  their labels). The split is fixed by the member's qualified name (``email.message.Message.
  get``), and a docstring that several members share is kept once, so none is in both splits.
- a local ``.csv`` or ``.jsonl`` file: columns ``text``, ``label``, optionally ``text_pair``
  (sentence pairs) and ``split`` (``train`` / ``test`` / ``validation``).
- a folder written by ``datasets``' ``save_to_disk``, or a Hub name (``NAME`` or
  ``NAME:CONFIG``, e.g. ``nyu-mll/glue:sst2``) where the machine is online.

Without a test split, a fixed 20% of the rows is held out by a hash of their text (a repeated
text lands in one split). A test split without labels (GLUE's) gives way to ``validation``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from bertpt.common.errors import UserError
from bertpt.data.corpus import named_docstrings, prose_paragraphs, stdlib_files

BUILTIN = "docstrings"
TEST_SHARE = 0.2
NUM_CLASSES = 12  # the built-in task's classes: the most frequent modules
FILE_SUFFIXES = (".csv", ".jsonl", ".json")
TEST_SPLITS = ("test", "validation", "dev")  # the first with labels is the test split


@dataclass
class Example:
    text: str
    text_pair: str | None
    label: int


@dataclass
class Task:
    name: str
    label_names: list[str]
    train: list[Example]
    test: list[Example]


@dataclass
class Encoded:
    """A split as token ids: the tokenizer's own [CLS] ... [SEP] (and pair) template."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    labels: list[int]

    def subset(self, rows: list[int]) -> Encoded:
        pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
        return Encoded(pick(self.ids), pick(self.type_ids), pick(self.labels))


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The export's own tokenizer, truncating to ``max_length`` tokens, no padding."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path} not found — the probe needs the export's own tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer: Tokenizer, examples: list[Example]) -> Encoded:
    pairs = bool(examples) and examples[0].text_pair is not None
    inputs = [(e.text, e.text_pair) if pairs else e.text for e in examples]
    encodings = tokenizer.encode_batch(inputs)
    return Encoded(
        [e.ids for e in encodings], [e.type_ids for e in encodings], [e.label for e in examples]
    )


@dataclass
class Columns:
    text: str = "text"
    text_pair: str = "text_pair"
    label: str = "label"


def _bucket(key: str) -> float:
    """A fixed number in [0, 1) for ``key``: the same on every machine and Python."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


# --- the built-in task -------------------------------------------------------------------------


def stdlib_members() -> list[tuple[str, str, str]]:
    """(top-level module, qualified name, prose) of each documented module, class and function
    of the standard library, with the prose paragraphs the default corpus keeps."""
    root = Path(sysconfig.get_paths()["stdlib"])
    members = []
    for path in stdlib_files():
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        module = ".".join(parts)
        for name, doc in named_docstrings(path):
            if text := " ".join(prose_paragraphs(doc)):
                members.append((parts[0], f"{module}.{name}" if name else module, text))
    return members


def docstring_task(num_classes: int = NUM_CLASSES) -> Task:
    """The built-in task: balanced classes, a split fixed by member name, no text in both."""
    labels_of: dict[str, set[str]] = {}
    first: dict[str, tuple[str, str]] = {}  # text -> (label, name) of its first member
    for label, name, text in stdlib_members():
        labels_of.setdefault(text, set()).add(label)
        first.setdefault(text, (label, name))
    # A text that several modules share says nothing of its module; kept once otherwise.
    kept = [(lb, name, text) for text, (lb, name) in first.items() if len(labels_of[text]) == 1]
    counts = Counter(label for label, _, _ in kept)
    classes = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:num_classes])
    ids = {c: i for i, c in enumerate(classes)}
    splits: dict[str, dict[str, list[tuple[str, str]]]] = {"train": {}, "test": {}}
    for label, name, text in kept:
        if label in ids:
            split = "test" if _bucket(name) < TEST_SHARE else "train"
            splits[split].setdefault(label, []).append((name, text))
    out = {}
    for split, by_class in splits.items():
        # Balanced: every class as large as the smallest, its members drawn by a fixed hash.
        cap = min(len(by_class.get(c, [])) for c in classes)
        out[split] = [
            Example(text, None, ids[c])
            for c in classes
            for _, text in sorted(by_class[c], key=lambda m: _bucket("keep:" + m[0]))[:cap]
        ]
    return Task(BUILTIN, classes, out["train"], out["test"])


# --- tasks from files, datasets folders and the Hub --------------------------------------------


def _read_file(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise UserError(
            f"task file {path} cannot be read ({e}) — give a UTF-8 CSV with a header, or JSON lines"
        ) from e


def _by_split(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    if not rows or "split" not in rows[0]:
        return {"all": rows}
    splits: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        splits.setdefault(str(row["split"]).strip().lower(), []).append(row)
    return splits


def _load_datasets(spec: str) -> dict[str, list[dict[str, Any]]]:
    import datasets

    saved = ("state.json", "dataset_dict.json")  # what Dataset(Dict).save_to_disk writes
    try:
        if any((Path(spec) / f).is_file() for f in saved):
            ds = datasets.load_from_disk(spec)
        else:  # a Hub name, or a local folder of data files
            name, _, config = spec.partition(":")
            ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # offline, no such dataset, not a dataset folder
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(
            f"task {spec!r} is not the built-in {BUILTIN!r}, a .csv/.jsonl file or a datasets "
            f"folder, and cannot be loaded as a Hub dataset ({reason}) — check the name, or "
            "give a local file"
        ) from e
    if isinstance(ds, datasets.Dataset):
        return {"all": ds.to_list()}
    return {split: ds[split].to_list() for split in ds}


def _labelled(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    # A test split without answers marks them as -1 (GLUE) or leaves them empty.
    return [r for r in rows if r.get(label) not in (None, "", -1, "-1")]


def _pick_splits(
    spec: str, splits: dict[str, list[dict[str, Any]]], label: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test) rows: the named splits, or a fixed share of all rows held out by text."""
    test = next((t for s in TEST_SPLITS if (t := _labelled(splits.get(s, []), label))), None)
    if "train" in splits and test:
        return _labelled(splits["train"], label), test
    if len(splits) > 1:
        raise UserError(
            f"task {spec} has the splits {sorted(splits)} but no labelled train and test "
            "(or validation) — name them train and test"
        )
    rows = _labelled(next(iter(splits.values())), label)
    held_out = [_bucket(json.dumps(r, sort_keys=True, default=str)) < TEST_SHARE for r in rows]
    return (
        [r for r, h in zip(rows, held_out, strict=True) if not h],
        [r for r, h in zip(rows, held_out, strict=True) if h],
    )


def _task_from_rows(spec: str, splits: dict[str, list[dict[str, Any]]], cols: Columns) -> Task:
    first = next((rows[0] for rows in splits.values() if rows), None)
    if first is None:
        raise UserError(f"task {spec} holds no rows — give a file with examples")
    for col in (cols.text, cols.label):
        if col not in first:
            raise UserError(
                f"task {spec} has no column {col!r} (it has {sorted(first)}) — name the columns "
                "text, label (and text_pair, split), or pass --text-column / --label-column"
            )
    train_rows, test_rows = _pick_splits(spec, splits, cols.label)
    values = {str(r[cols.label]) for r in train_rows + test_rows}
    numeric = all(v.lstrip("-").isdigit() for v in values)
    names = sorted(values, key=int) if numeric else sorted(values)
    if len(names) < 2:
        raise UserError(f"task {spec} has {len(names)} label(s) {names} — a task needs two or more")
    ids = {n: i for i, n in enumerate(names)}
    pairs = cols.text_pair in first

    def examples(rows: list[dict[str, Any]]) -> list[Example]:
        pair = (lambda r: str(r[cols.text_pair])) if pairs else (lambda r: None)
        return [Example(str(r[cols.text]), pair(r), ids[str(r[cols.label])]) for r in rows]

    train, test = examples(train_rows), examples(test_rows)
    if not train or not test:
        raise UserError(
            f"task {spec} gives {len(train)} training and {len(test)} test examples — "
            "both splits need examples"
        )
    return Task(spec, names, train, test)


def load_task(spec: str, columns: Columns | None = None) -> Task:
    """The task named by ``spec`` (see the module's docstring)."""
    cols = columns or Columns()
    if spec in (BUILTIN, f"builtin:{BUILTIN}"):
        return docstring_task()
    path = Path(spec).expanduser()
    if path.suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise UserError(f"task file {path} not found — check the path")
        return _task_from_rows(spec, _by_split(_read_file(path)), cols)
    return _task_from_rows(spec, _load_datasets(spec), cols)


def dev_split(examples: list[Example], share: float = TEST_SHARE) -> tuple[list[int], list[int]]:
    """Indices (fit, dev) of a training split: a fixed ``share`` of each class held out, chosen by
    a hash of the text. The probe picks its learning rate on dev, never on the test split."""
    by_class: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_class.setdefault(e.label, []).append(i)
    fit, dev = [], []
    for rows in by_class.values():
        rows = sorted(rows, key=lambda i: _bucket(f"dev:{i}:{examples[i].text}"))
        n_dev = max(1, round(share * len(rows))) if len(rows) > 1 else 0
        dev += rows[:n_dev]
        fit += rows[n_dev:]
    return sorted(fit), sorted(dev)
