"""Files that appear whole or not at all: written beside their target, then renamed or linked.

A temporary file in the target's own folder is on the same file system, so ``os.replace`` /
``os.link`` put it in place in one step; a crash before that leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def temp_beside(target: Path) -> Iterator[tuple[int, Path]]:
    """An open descriptor and path of a new hidden file beside ``target``, with the
    permissions ``open()`` would give it (``mkstemp`` makes it private); removed on exit unless
    it was renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        yield fd, Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
