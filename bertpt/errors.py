"""bertpt's one error type for mistakes a user can fix.

A bad path, a bad value, a mismatched tokenizer or checkpoint, a folder in use: raise
:class:`UserError` with one line, ``<what> — <fix>``, naming the offending value. Entry points
catch it once and print ``error: <message>`` on stderr, exit status 2, no traceback
(``HYDRA_FULL_ERROR=1`` shows it). Bugs raise anything else and keep their traceback.

It subclasses ``ValueError`` so that callers that already catch ``ValueError`` keep working.
This module imports nothing, so the config check can raise it before torch is imported.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message is one line naming the value and the fix."""


EXIT_USER_ERROR = 2
