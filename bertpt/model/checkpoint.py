"""The bertpt checkpoint: the ``.ckpt`` a run writes, written so that a crash cannot corrupt it,
and read back as data only.

Lightning writes it for a :class:`~bertpt.training.module.BertPretrainModule`; bertpt reads back

* ``state_dict``: the module's, which holds the BertForPreTraining under the prefix ``model.``;
* ``global_step``: the optimizer steps taken;
* ``hyper_parameters``: ``model_config`` (BertConfig's fields), ``tokenizer_dir`` (the run's copy
  of its tokenizer) and ``tokenizer_hash`` (the sha256 of that ``tokenizer.json``); the last two
  are None for a module trained without bertpt's DataModule.

:func:`read_checkpoint` gives these as a :class:`Checkpoint`; the module restores its own extra
keys (random states, skipped steps) when Lightning resumes. Every torch file bertpt reads is
loaded with ``weights_only`` (:func:`load_torch_file`), so a file that would run code is refused.

Writing: Lightning's own writer goes through an fsspec transaction: the bytes go to a temporary
file in the system temp folder, then ``shutil.move`` puts it in place. When that folder is on
another file system than the run (``/tmp`` on a node, the run on shared storage) the move is a
copy into the destination, and a crash during the copy leaves a truncated ``last.ckpt``; it also
holds the whole checkpoint twice in memory. Here the temporary file sits beside its destination,
is synced to disk, and replaces it with one atomic rename: the old file or the new one, never
half of one (:func:`atomic_torch_save`, which ``bertpt.training.fit.AtomicCheckpointIO`` gives to
Lightning). This module imports no Lightning: exporting a checkpoint does not need it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertpt.common.atomic import temp_beside
from bertpt.common.errors import UserError, refused_writes
from bertpt.model.bert import BertConfig

MODEL_PREFIX = "model."  # attribute name of the BertForPreTraining in the LightningModule
# The hyper-parameters bertpt reads back (BertPretrainModule saves all its arguments).
HPARAMS = ("model_config", "tokenizer_dir", "tokenizer_hash")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, all or nothing: write beside ``path``, fsync, rename.

    Temporary files that a killed writer left beside it are removed first (``temp_beside``). A
    write the disk refuses (full, a size limit) is a UserError; the old file stays.
    """
    path = Path(path)
    with temp_beside(path) as (fd, tmp):
        kept, then = "the previous checkpoint is intact", " and resume with ckpt_path=last"
        with refused_writes("checkpoint", path, kept, then), os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    # Make the rename itself durable (a power cut after it must not bring back the old entry).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class Checkpoint:
    """What bertpt reads back from a checkpoint that a bertpt run wrote."""

    path: Path
    step: int  # global_step
    model_config: dict[str, Any]  # BertConfig's fields, as the run saved them
    state_dict: dict[str, torch.Tensor]  # BertForPreTraining's weights (memory-mapped)
    tokenizer_dir: str | None  # the tokenizer folder the run recorded
    tokenizer_hash: str | None  # sha256 of its tokenizer.json

    @property
    def config(self) -> BertConfig:
        """The model's BertConfig; a UserError for a model_config this bertpt cannot build."""
        return bert_config(self.model_config, str(self.path))


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint a bertpt run wrote at ``path``, loaded as data only and memory-mapped, so
    the tensors that bertpt does not read (optimizer state) stay on disk.

    Raises :class:`UserError` (one line naming the file) when the file is missing, truncated,
    not a torch checkpoint, holds Python objects beyond tensors and plain data, or is not a
    bertpt checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found — check the path")
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict):
        raise UserError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict — pass a .ckpt "
            "that bertpt wrote"
        )
    hparams = ckpt.get("hyper_parameters") or {}
    lacks = [k for k in ("state_dict", "global_step") if k not in ckpt]
    lacks += [f"hyper_parameters[{k!r}]" for k in HPARAMS if k not in hparams]
    if lacks:
        raise UserError(
            f"{path} is not a bertpt Lightning checkpoint (it lacks {', '.join(lacks)}) — pass "
            "a .ckpt that a bertpt run wrote (one from an earlier bertpt: export it with that "
            "version)"
        )
    return Checkpoint(
        path=path,
        step=int(ckpt["global_step"]),
        model_config=dict(hparams["model_config"]),
        state_dict=model_weights(ckpt["state_dict"], str(path)),
        tokenizer_dir=hparams["tokenizer_dir"],
        tokenizer_hash=hparams["tokenizer_hash"],
    )


def model_weights(module_state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """BertForPreTraining's weights in a BertPretrainModule's state dict (keys ``model.*``), a
    checkpoint's or a live module's; a UserError when there are none."""
    sd = {k[len(MODEL_PREFIX) :]: v for k, v in module_state.items() if k.startswith(MODEL_PREFIX)}
    if not sd:
        raise UserError(
            f"{source}: no key in state_dict starts with {MODEL_PREFIX!r} — not a bertpt "
            "checkpoint: pass a .ckpt from a bertpt run"
        )
    return sd


def bert_config(model_config: Mapping[str, Any], source: str) -> BertConfig:
    """The BertConfig of a module's ``model_config`` hyper-parameter; a UserError when this
    bertpt cannot build it."""
    model_config = {k: v for k, v in model_config.items() if k != "init_from"}
    try:
        return BertConfig.from_dict(model_config)
    except (TypeError, ValueError) as e:
        raise UserError(
            f"{source}: hyper_parameters['model_config'] does not fit this bertpt ({e}) — export "
            "it with the bertpt version that wrote it"
        ) from e


def error_reason(e: BaseException) -> str:
    """The exception's type and first line, for a one-line message."""
    lines = str(e).strip().splitlines()
    # torch's weights-only text advises weights_only=False: no fix for a broken file.
    if not lines or isinstance(e, pickle.UnpicklingError):
        return type(e).__name__
    return f"{type(e).__name__}: {lines[0]}"


def load_torch_file(path: Path) -> Any:
    """``torch.load`` that never runs code from the file (``weights_only``); a zip checkpoint is
    memory-mapped, so tensors that the caller drops (optimizer state) are never read. A file it
    cannot read is a UserError."""
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as e:  # a truncated or foreign file fails in many ways inside pickle
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise UserError(
                f"{path} holds the Python object {refused.group(1)}, not only tensors and plain "
                "data, and bertpt never runs code from a checkpoint — export a checkpoint that "
                "bertpt wrote, or, if you trust this file, save its state_dict alone with "
                "torch.save and export that"
            ) from e
        raise UserError(
            f"{path} cannot be read ({error_reason(e)}) — it is truncated or not a torch "
            "checkpoint: copy it again or use another checkpoint"
        ) from e
