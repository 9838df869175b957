"""Checkpoints that a crash cannot corrupt.

Lightning's own writer goes through an fsspec transaction: the bytes go to a temporary file in
the system temp folder, then ``shutil.move`` puts it in place. When that folder is on another
file system than the run (``/tmp`` on a node, the run on shared storage) the move is a copy into
the destination, and a crash during the copy leaves a truncated ``last.ckpt``; it also holds the
whole checkpoint twice in memory. Here the temporary file sits beside its destination, is synced
to disk, and replaces it with one atomic rename: the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bertpt.atomic import temp_beside
from bertpt.errors import UserError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, all or nothing: write beside ``path``, fsync, rename.

    Temporary files that a killed writer left beside it are removed first (``temp_beside``). A
    write the disk refuses (full, a size limit) is a UserError; the old file stays.
    """
    path = Path(path)
    with temp_beside(path) as (fd, tmp):
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            # torch's zip writer reports a refused write as "unexpected pos N vs M"
            if isinstance(e, RuntimeError) and "inline_container" not in str(e):
                raise
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip()
            no_room = not isinstance(e, OSError) or e.errno in (
                errno.ENOSPC,
                errno.EDQUOT,
                errno.EFBIG,
            )
            fix = f"free space in {path.parent}" if no_room else f"make {path.parent} writable"
            raise UserError(
                f"cannot write checkpoint {path}: the disk refused the write ({reason}) — the "
                f"previous checkpoint is intact: {fix} and resume with ckpt_path=last"
            ) from e
        os.replace(tmp, path)
    # Make the rename itself durable (a power cut after it must not bring back the old entry).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes local files with :func:`atomic_torch_save`.

    Remote URLs (``s3://``, ``gs://`` ...) keep Lightning's writer: object stores already put
    an object all at once.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"storage_options is not supported by {type(self).__name__}: "
                f"got {storage_options!r}; drop it or use a custom CheckpointIO"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))
