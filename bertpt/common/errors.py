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
import os
import sys
from collections.abc import Iterator


class UserError(ValueError):
    """A mistake the user can fix; the message is one line naming the value and the fix."""


EXIT_USER_ERROR = 2


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
