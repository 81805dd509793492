"""Errors a user can fix. The CLI prints them as one line and exits 2 (no traceback)."""


class PetuneError(Exception):
    """Base of every user-facing error: the message names the bad value and what is allowed."""


class ConfigError(PetuneError, ValueError):
    """A bad value in a recipe, command line or sweep file."""
