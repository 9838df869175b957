"""bertpt's one error type for mistakes a user can fix.

A bad path, a bad value, a mismatched tokenizer or checkpoint, a folder in use: raise
:class:`UserError` with one line, ``<what> — <fix>``, naming the offending value. Entry points
catch it once and print ``error: <message>`` on stderr, exit status 2, no traceback
(``HYDRA_FULL_ERROR=1`` shows it). Bugs raise anything else and keep their traceback.

It subclasses ``ValueError`` so that callers that already catch ``ValueError`` keep working.
This module imports only the standard library, so the config check can raise it before torch
is imported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path


class UserError(ValueError):
    """A mistake the user can fix; the message is one line naming the value and the fix."""


EXIT_USER_ERROR = 2

# What a refused write says when the disk is full or a file may not grow: room is the fix.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def refused_writes(kind: str, target: Path, kept: str, then: str) -> Iterator[None]:
    """Around writing ``kind`` ``target``: a write the disk refused (full, a size limit,
    read-only) becomes one UserError line; any other error passes unchanged. Writers report a
    refusal their own way: an ``OSError``; torch's zip writer a RuntimeError that it stopped
    short (``unexpected pos N vs M``); safetensors an error that names ``(os error N)``.
    ``kept`` says what is still there, ``then`` how to carry on after the fix."""
    try:
        yield
    except Exception as e:
        code: int | None = e.errno if isinstance(e, OSError) else None
        found = re.search(r"\(os error (\d+)\)", str(e))
        if code is None and found:
            code = int(found.group(1))
        if code is not None:
            reason = os.strerror(code)
        elif isinstance(e, RuntimeError) and "inline_container" in str(e):
            reason, code = "the file stopped short of its end", errno.ENOSPC
        else:
            raise
        where = target.parent
        fix = f"free space in {where}" if code in NO_ROOM else f"make {where} writable"
        raise UserError(
            f"cannot write {kind} {target}: the disk refused the write ({reason}) — {kept}: "
            f"{fix}{then}"
        ) from e


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Around an entry point: a UserError prints ``error: <message>`` on stderr and exits 2;
    ``HYDRA_FULL_ERROR=1`` (the project's switch for tracebacks) lets it raise instead."""
    try:
        yield
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
