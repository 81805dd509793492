"""The ``petune fit`` parser: one-line errors from jsonargparse's reports, and integers that stay integers.

jsonargparse reports a bad value as a nested, multi-line "does not validate against any of the types" text;
users need the key, the bad value and what is allowed. :func:`condense` turns such a report into one line,
:class:`CondensingParser` raises it instead of printing usage, and :func:`petune_cause` keeps a class's own
refusal (a :class:`~pl_petune.errors.PetuneError` raised in an ``__init__``) in its own words.

jsonargparse tries a union's types in their written order and its ``float`` accepts an integer, so Lightning's
``limit_train_batches: Union[float, int, None]`` turned a typed ``1`` (one batch) into ``1.0`` (all batches).
:func:`int_before_float` puts ``int`` before ``float`` in every union an argument of this parser declares: a
value written as an integer stays an ``int``, one written with a dot or exponent is a ``float``.
"""

from __future__ import annotations

import functools
import operator
import re
import types
from typing import Any, NoReturn, Union, get_args, get_origin

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
    from pl_petune.argtypes import render_parse_error

    typed = render_parse_error(text, where)  # a constrained method argument or a Literal: name, value, range
    if typed:
        return typed
    if where and detail:
        return f"{where}: {detail}"
    return lines[0] if len(lines) == 1 else (lines[0] + " " + detail).strip()


def int_before_float(typehint: Any) -> Any:
    """``typehint`` with ``int`` moved just before ``float`` in each union holding both (nested ones too).

    Example:
        >>> int_before_float(Union[float, int, None])
        int | float | None
    """
    args = get_args(typehint)
    if not args or get_origin(typehint) is not None and str(get_origin(typehint)).endswith("Literal"):
        return typehint
    new = tuple(int_before_float(a) for a in args)
    if get_origin(typehint) in (Union, types.UnionType):
        if int in new and float in new and new.index(float) < new.index(int):
            rest = [a for a in new if a is not int]
            rest.insert(rest.index(float), int)
            new = tuple(rest)
        if all(a is b for a, b in zip(new, args)):
            return typehint
        try:  # `|` builds a new union; Union[...] is cached by equality, which ignores the order of nested unions
            return functools.reduce(operator.or_, new)
        except TypeError:
            return Union[new]
    if all(a is b for a, b in zip(new, args)):
        return typehint
    if isinstance(typehint, types.GenericAlias):  # list[...], dict[...]
        return types.GenericAlias(get_origin(typehint), new)
    try:
        return typehint.copy_with(new)  # typing.List[...], typing.Dict[...]
    except (AttributeError, TypeError):
        return typehint


class CondensingParser(LightningArgumentParser):
    """Lightning's parser whose errors become one line (the bad key and value) instead of usage + report, and
    whose unions of ``float`` and ``int`` keep a typed integer an ``int`` (:func:`int_before_float`)."""

    def add_argument(self, *args: Any, **kwargs: Any):
        # jsonargparse copies an overriding add_argument into the groups it makes (get_argument_group_class),
        # so this runs for every argument; the type hint is already in the action when a signature is added.
        action = super().add_argument(*args, **kwargs)
        hint = getattr(action, "_typehint", None)
        if hint is not None:
            action._typehint = int_before_float(hint)
        return action

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        cause = petune_cause(ex)
        if cause is not None:
            raise cause
        raise ArgumentsError(condense(message))
