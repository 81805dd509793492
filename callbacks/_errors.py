"""The one error type of the callbacks, shared by every module (selection included)."""

from __future__ import annotations


class CallbackMisuse(ValueError):
    """A callback was configured or attached in a way it cannot honour.

    The message is one line naming the callback, the argument, the bad value and what is allowed.
    """
