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

from bertpt.errors import UserError
from bertpt.export import load_bertpt_checkpoint
from bertpt.hf import WEIGHT_FILES, read_state_dict
from bertpt.tokenizer import load_tokenizer, tokenizer_hash

log = logging.getLogger(__name__)

# Model settings that change only the speed: a checkpoint resumes under other values.
SPEED_ONLY = ("gradient_checkpointing",)


@dataclass
class Resume:
    """The checkpoint a run resumes from."""

    path: Path
    step: int
    hparams: dict[str, Any]


def read_resume(path: Path, model_config: dict[str, Any]) -> Resume:
    """Read the checkpoint and check that this run's model settings are the ones it trained."""
    ckpt = load_bertpt_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    trained = hparams["model_config"]
    ignore = {"vocab_size", "init_from", *SPEED_ONLY}  # the vocabulary is the tokenizer's
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
    return Resume(path, int(ckpt["global_step"]), hparams)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()


def vocabulary(folder: Path) -> list[str]:
    """The tokens of a tokenizer folder by id: ``vocab.txt`` if it has one, else tokenizer.json."""
    if (folder / "vocab.txt").is_file():
        return (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = load_tokenizer(folder).get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def _resume_tokenizer(resume: Resume, path: str | None, allow_mismatch: bool) -> str | None:
    recorded_hash = resume.hparams.get("tokenizer_hash")
    # The run folder's copy: next to the checkpoint, wherever the run was started from.
    own = resume.path.parent.parent / "tokenizer"
    if path is None:
        if (own / "tokenizer.json").is_file():
            return str(own)
        return None  # a checkpoint from before runs kept their tokenizer: the config decides
    if recorded_hash and tokenizer_hash(path) != recorded_hash and not allow_mismatch:
        raise UserError(
            f"tokenizer.path {path} is not the tokenizer {resume.path} was trained with "
            f"(sha256 {tokenizer_hash(path)[:12]}… vs {recorded_hash[:12]}…) — drop "
            f"tokenizer.path to use the run's own ({own}), or set tokenizer.allow_mismatch=true"
        )
    return path


def _init_from_tokenizer(init_from: Path, path: str | None, allow_mismatch: bool) -> str:
    if path is None:
        if not _has_tokenizer(init_from):
            raise UserError(
                f"model.init_from {init_from} holds no tokenizer (tokenizer.json or vocab.txt) — "
                "pass the tokenizer it was trained with: tokenizer.path=DIR"
            )
        log.info("tokenizer: %s, the one model.init_from was trained with", init_from)
        return str(init_from)
    if _has_tokenizer(init_from) and vocabulary(Path(path)) != vocabulary(init_from):
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
    """Weights in a Hugging Face folder (its config.json was checked with the config); pickled
    weights are read here, memory-mapped and as data only, so a file that would run code stops
    the run now."""
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise UserError(
            f"model.init_from {folder} holds none of {list(WEIGHT_FILES)} — give a folder with "
            "the model's weights"
        )
    if weights.suffix == ".bin":
        read_state_dict(weights)
