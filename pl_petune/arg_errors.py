"""One-line errors from jsonargparse's reports, for every command that parses a ``petune fit`` argv.

jsonargparse reports a bad value as a nested, multi-line "does not validate against any of the types" text;
users need the key, the bad value and what is allowed. :func:`condense` turns such a report into one line,
:class:`CondensingParser` raises it instead of printing usage, and :func:`petune_cause` keeps a class's own
refusal (a :class:`~pl_petune.errors.PetuneError` raised in an ``__init__``) in its own words.
"""

from __future__ import annotations

import re
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from pl_petune.errors import PetuneError


class ArgumentsError(PetuneError):
    """A command line or recipe that does not parse (condensed to one line)."""


def petune_cause(err: BaseException | None) -> PetuneError | None:
    """The first :class:`PetuneError` in ``err``'s chain (jsonargparse wraps a class's refusal in ValueError)."""
    while err is not None and not isinstance(err, PetuneError):
        err = err.__cause__ or err.__context__
    return err


def condense(message: str) -> str:
    """Condense a jsonargparse error report to one line naming the bad key and value.

    Args:
        message: the parser's report, as jsonargparse passes it to ``error()`` or puts in its exception.

    Returns:
        ``"<key>: <innermost reason>"`` when the report names both, an ``unknown method class`` line for a
        ``model.class_path`` that does not import, else the report's first line.

    Example:
        >>> condense('Parser key "model.init_args.lr":\\n  Expected a <class \\'float\\'>. Got value: abc')
        "model.init_args.lr: Expected a <class 'float'>. Got value: abc"
    """
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "the arguments do not parse"
    text = " ".join(lines)
    m = re.search(r"NestedArg\(key='class_path', val='([^']+)'\)", text)
    if m:
        from pl_petune.methods import METHODS

        known = ", ".join(f"pl_petune.methods.{c.__name__} ({n})" for n, c in sorted(METHODS.items()))
        return f"unknown method class {m.group(1)!r}; known: {known}"
    key = re.search(r'Parser key "([^"]+)"', text)
    nested = re.search(r"NestedArg\(key='([^']+)', val='([^']*)'\)", text)
    detail = next((ln.lstrip("- ") for ln in lines if ("Expected a" in ln or "not accepted" in ln
                   or "does not exist" in ln.lower()) and "NoneType" not in ln), "")
    where = key.group(1) if key else ""
    if nested and where:
        where = f"{where}.{nested.group(1)}" if not where.endswith(nested.group(1)) else where
    if where and detail:
        return f"{where}: {detail}"
    return lines[0] if len(lines) == 1 else (lines[0] + " " + detail).strip()


class CondensingParser(LightningArgumentParser):
    """Lightning's parser whose errors become one line (the bad key and value) instead of usage + report."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        cause = petune_cause(ex)
        if cause is not None:
            raise cause
        raise ArgumentsError(condense(message))
