"""Checks on the files a run starts from, before any long work: the checkpoint it resumes, the
Hugging Face model it starts from, and the tokenizer that must match both.

A checkpoint is read once here, memory-mapped and as data only (never code), so a truncated,
foreign or malicious file stops the run in one line. The tokenizer a model was trained with is
the one it keeps: a resume takes the checkpoint's own copy (``RUN/tokenizer``) and
``model.init_from`` the folder's tokenizer, unless ``tokenizer.path`` names one, which must then
have the same vocabulary (``tokenizer.allow_mismatch=true`` overrides).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertpt.common.errors import UserError
from bertpt.data.tokenizer import check_tokenizer_hash, load_tokenizer
from bertpt.model.bert import SPEED_FIELDS
from bertpt.model.checkpoint import read_checkpoint
from bertpt.model.hf import read_state_dict, weights_file
from bertpt.training.export import run_folder_of

log = logging.getLogger(__name__)


@dataclass
class Resume:
    """The checkpoint a run resumes from. Not its weights: Lightning loads those, and holding
    their memory map would keep a replaced ``last.ckpt`` on disk for the whole run."""

    path: Path
    step: int
    tokenizer_hash: str | None


def read_resume(path: Path, model_config: dict[str, Any]) -> Resume:
    """Read the checkpoint and check that this run's model settings are the ones it trained."""
    ckpt = read_checkpoint(path)
    trained = ckpt.model_config
    # The vocabulary is the tokenizer's; speed settings may change between the legs of a run.
    ignore = {"vocab_size", "init_from", *SPEED_FIELDS}
    differ = [
        f"{k}={trained.get(k)!r} (this run: {v!r})"
        for k, v in model_config.items()
        if k not in ignore and trained.get(k) != v
    ]
    if differ:
        raise UserError(
            f"{path} was trained with {', '.join(differ)} — resume with the checkpoint's model "
            "settings"
        )
    return Resume(path, ckpt.step, ckpt.tokenizer_hash)


def vocabulary(folder: Path) -> list[str]:
    """The tokens of a tokenizer folder by id: ``vocab.txt`` if it has one, else tokenizer.json."""
    if (folder / "vocab.txt").is_file():
        return (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = load_tokenizer(folder).get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def _resume_tokenizer(resume: Resume, path: str | None, allow_mismatch: bool) -> str | None:
    """The checkpoint's own tokenizer (the copy in its run folder), or ``path`` if it is the
    same tokenizer; None for a checkpoint that records neither (the config decides)."""
    run = run_folder_of(resume.path)
    own = run / "tokenizer" if run is not None else None
    chosen = path or (str(own) if own is not None and (own / "tokenizer.json").is_file() else None)
    recorded = resume.tokenizer_hash
    if chosen is not None and recorded:
        fix = "drop tokenizer.path to use the run's own copy" if path else "restore that copy"
        check_tokenizer_hash(
            chosen, recorded, f"{fix}, or set tokenizer.allow_mismatch=true", allow_mismatch
        )
    return chosen


def _init_from_tokenizer(init_from: Path, path: str | None, allow_mismatch: bool) -> str:
    if path is None:
        if not (init_from / "tokenizer.json").is_file():
            raise UserError(
                f"model.init_from {init_from} holds no tokenizer.json — pass the tokenizer it was "
                "trained with (tokenizer.path=DIR), or save a fast one into it: "
                f"AutoTokenizer.from_pretrained('{init_from}').save_pretrained('{init_from}')"
            )
        log.info("tokenizer: %s, the one model.init_from was trained with", init_from)
        return str(init_from)
    has_vocab = (init_from / "tokenizer.json").is_file() or (init_from / "vocab.txt").is_file()
    if has_vocab and vocabulary(Path(path)) != vocabulary(init_from):
        if not allow_mismatch:
            raise UserError(
                f"tokenizer.path {path} has another vocabulary than model.init_from {init_from} "
                "(the model's embeddings would mean other tokens) — drop tokenizer.path to use "
                "the model's own, or set tokenizer.allow_mismatch=true"
            )
        log.warning("tokenizer %s differs from %s's (allowed)", path, init_from)
    return path


def choose_tokenizer(
    tokenizer_cfg: dict[str, Any], resume: Resume | None, init_from: str | None
) -> str | None:
    """The tokenizer folder this run must use (None: train or reuse one for the corpus)."""
    path, allow = tokenizer_cfg.get("path"), bool(tokenizer_cfg.get("allow_mismatch"))
    if path is not None:  # checked with the config: it exists and is a tokenizer
        path = str(Path(path).resolve())
    if resume is not None:
        return _resume_tokenizer(resume, path, allow)
    if init_from:
        check_init_from(Path(init_from))
        return _init_from_tokenizer(Path(init_from), path, allow)
    return path


def check_init_from(folder: Path) -> None:
    """Pickled weights in a Hugging Face folder (its config.json was checked with the config)
    are read here, memory-mapped and as data only, so a file that would run code stops the run
    before any work; safetensors hold no code."""
    weights = weights_file(folder)
    if weights.suffix == ".bin":
        read_state_dict(weights)
