"""User errors: what a person did wrong (a bad file, option or combination), said in one line.

The CLI prints ``error: <message>`` and exits 2 for these, never a traceback. Library code
raises :class:`UserError` (or a subclass) where the input, not the code, is at fault; the
message names the file, line or option and, where it helps, what to do instead.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input from the user; the message is meant to be shown as is."""
