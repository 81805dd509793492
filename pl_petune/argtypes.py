"""Constrained argument types: bad method arguments are refused when the recipe or command line is parsed.

Each type is a marker class registered with jsonargparse (``register_type``): the parser checks the value and
hands the method a plain ``float`` or ``int`` (so hyper-parameters and checkpoints hold builtins only), and a
bad value is refused before any backbone loads, as one line naming the argument, the value and the allowed
range. Closed sets are ``typing.Literal``. Python callers get the same checks from :func:`check_arguments`,
which reads the annotations of a class's ``__init__`` chain, so one annotation serves both paths.

Example:
    ``petune fit --config recipes/quickstart.yaml --model.init_args.head_dropout 1.5`` exits 2 with
    ``model.init_args.head_dropout: head_dropout must be in [0, 1), got 1.5``.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Callable, Literal, Optional, Union

from jsonargparse.typing import register_type

from pl_petune.errors import ConfigError

__all__ = ["Probability", "PositiveFloat", "NonNegativeFloat", "PositiveInt", "Seed", "SEED_MAX",
           "check_value", "check_arguments", "render_parse_error"]

SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range (seed_everything refuses larger seeds)


class _Checked:
    """Base of the marker types: ``allowed`` is the phrase after "must be", ``test`` the predicate."""

    base: type = float
    allowed: str = ""

    @staticmethod
    def test(value: Any) -> bool:  # pragma: no cover - overridden
        return True


class Probability(float, _Checked):
    """A probability in [0, 1): dropout rates, Adam betas, warmup ratios."""

    allowed = "in [0, 1)"

    @staticmethod
    def test(value: Any) -> bool:
        return 0.0 <= value < 1.0


class PositiveFloat(float, _Checked):
    """A float > 0: learning rates, Adam epsilon, LoRA alpha."""

    allowed = "positive"

    @staticmethod
    def test(value: Any) -> bool:
        return value > 0.0


class NonNegativeFloat(float, _Checked):
    """A float >= 0: weight decay."""

    allowed = ">= 0"

    @staticmethod
    def test(value: Any) -> bool:
        return value >= 0.0


class PositiveInt(int, _Checked):
    """An integer >= 1: ranks, lengths, sizes, layer counts."""

    base = int
    allowed = "an integer >= 1"

    @staticmethod
    def test(value: Any) -> bool:
        return value >= 1


class Seed(int, _Checked):
    """A seed in [0, 2**32 - 1] (numpy's and Lightning's range)."""

    base = int
    allowed = f"an integer in [0, {SEED_MAX}]"

    @staticmethod
    def test(value: Any) -> bool:
        return 0 <= value <= SEED_MAX


CHECKED = (Probability, PositiveFloat, NonNegativeFloat, PositiveInt, Seed)
_MARK = "not accepted:"  # jsonargparse keeps a deserializer's message; this tag lets render_parse_error find it


def _coerce(kind: type, value: Any) -> Any:
    """``value`` as a plain ``kind.base`` if it satisfies ``kind``; else ValueError (tagged when only the range
    is wrong, worded like jsonargparse's own type errors when it is not a number at all)."""
    base = kind.base  # type: ignore[attr-defined]
    if isinstance(value, str):
        try:
            value = base(value) if base is float else int(value)
        except ValueError:
            raise ValueError(f"Expected a {base}. Got value: {value}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected a {base}. Got value: {value!r}")
    if base is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"Expected a {base}. Got value: {value!r}")
        value = int(value)
    else:
        value = float(value)
    if value != value or not kind.test(value):  # type: ignore[attr-defined]
        raise ValueError(f"{_MARK} must be {kind.allowed}, got {value!r}")  # type: ignore[attr-defined]
    return value


def _register(kind: type) -> None:
    register_type(kind, kind.base, lambda v, _k=kind: _coerce(_k, v))  # type: ignore[attr-defined]


for _kind in CHECKED:
    _register(_kind)


# ---- Python callers ---------------------------------------------------------------------------------------
def check_value(name: str, value: Any, annotation: Any) -> None:
    """Refuse ``value`` for argument ``name`` unless it fits ``annotation`` (a checked type, a Literal, or
    Optional/tuple/list of them); other annotations are not checked here.

    Raises:
        ConfigError: one line naming the argument, the value and what is allowed.
    """
    if annotation in CHECKED:
        try:
            _coerce(annotation, value)
        except ValueError:
            raise ConfigError(f"{name} must be {annotation.allowed}, got {value!r}") from None
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(map(str, args))}")
    elif origin is Union:
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            check_value(name, value, inner[0])
    elif origin in (tuple, list) and isinstance(value, (tuple, list)):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) == len(args) and len(value) != len(inner):
            raise ConfigError(f"{name} must have {len(inner)} values, got {list(value)!r}")
        for i, item in enumerate(value):
            check_value(name, item, inner[min(i, len(inner) - 1)] if inner else Any)


def _hints(func: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # an unresolvable forward reference: nothing to check there
        return {}


def check_arguments(cls: type, values: dict[str, Any], stop: Optional[type] = None) -> None:
    """Check ``values`` against the annotated ``__init__`` arguments of ``cls`` and its bases (up to ``stop``).

    Raises:
        ConfigError: the first argument whose value its annotation refuses.
    """
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            hints = _hints(klass.__init__)  # type: ignore[misc]
            for name in inspect.signature(klass.__init__).parameters:  # type: ignore[misc]
                if name in hints and name in values:
                    check_value(name, values[name], hints[name])
        if klass is stop:
            break


# ---- the one-line parse error ------------------------------------------------------------------------------
def render_parse_error(text: str, where: str) -> Optional[str]:
    """One line for a jsonargparse error about a checked type or a Literal at key ``where``, else None.

    ``text`` is the parser's whole report joined on one line; ``where`` the dotted key it names (jsonargparse
    names only the argument for a ``--model.init_args.<name>`` override).
    """
    name = where.rsplit(".", 1)[-1] if where else "value"
    lead = f"{where}: " if "." in where else ""
    given = re.search(r"Given value: (.+?)(?:$| Subtypes)", text)
    m = re.search(r"not accepted: must be (.+?), got (.+?)(?:$| - |\s+Given value)", text)
    if m:
        return f"{lead}{name} must be {m.group(1)}, got {_plain(m.group(2))}"
    m = re.search(r"not accepted: must be (.+?)(?:$| - |\s+Given value)", text)
    if m:
        value = _plain(given.group(1)) if given else "?"
        return f"{lead}{name} must be {m.group(1).rstrip(',')}, got {value}"
    m = re.search(r"Expected a typing\.Literal\[(.+?)\](?:\. Got value: (\S+))?", text)
    if m:
        known = ", ".join(x.strip().strip("'\"") for x in m.group(1).split(","))
        value = m.group(2) or (given.group(1) if given else "?")
        return f"{lead}unknown {name} {_plain(value)!r}; known: {known}"
    return None


def _plain(value: str) -> str:
    """A value as the user typed it: quotes that the parser added around a command-line string removed."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
