"""argparse errors in one line: the tools' parsers raise instead of printing their usage block.

``argparse.ArgumentParser.error`` prints the whole usage (3 to 8 lines) before the message; a user fixing one
option needs the message, the allowed choices argparse already names, and where the full help is.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator, NoReturn

from pl_petune.errors import PetuneError


class UsageError(PetuneError):
    """A command line argparse refuses (condensed to its message and a pointer to ``--help``)."""


@contextmanager
def one_line_usage() -> Iterator[None]:
    """Inside this block every ``argparse`` parser raises :class:`UsageError` instead of printing usage."""
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        raise UsageError(f"{' '.join(message.split())} (see {self.prog} --help)")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


__all__ = ["UsageError", "one_line_usage"]
