"""The method registry: one validated registration per method.

A method's module registers its class with :func:`register_method`, giving the method's name (as in recipes,
run records and ``petune params --method``) and the patterns that find the parameters it adds to the backbone:

    @register_method("lora", added=r"\\.lora_(?:A|B)\\.")
    class LoRA(PetLayerMethod): ...

The name is unique, lowercase (``[a-z][a-z0-9_]*``) and belongs to exactly that class: a subclass that is not
registered itself is recorded under its own class name, never under its parent's, so its runs cannot mix into
the parent method's statistics. ``PetuneModule._is_added`` reads the patterns from here (inherited through the
class hierarchy), so parameter accounting has one source.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence, TypeVar, Union

from pl_petune.errors import ConfigError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
METHODS: dict[str, type] = {}
_NAMES: dict[type, str] = {}
_ADDED: dict[type, tuple[re.Pattern[str], ...]] = {}

T = TypeVar("T", bound=type)


class RegistrationError(ConfigError):
    """A method registration that would make two methods indistinguishable (or a malformed one)."""


def register_method(name: str, added: Union[str, Sequence[str]] = ()) -> Callable[[T], T]:
    """Class decorator: register a :class:`~pl_petune.methods.PetuneModule` subclass as method ``name``.

    Args:
        name: the method's name: lowercase ``[a-z][a-z0-9_]*``, unique in the registry.
        added: regex(es) (``re.search`` over ``named_parameters()`` names of the module) matching the parameters
            the method adds to the backbone; empty for methods that only select pretrained parameters.

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        RegistrationError: the name is not lowercase, is taken by another class, the class is already registered
            under another name, another registered class of ``pl_petune.methods`` has the same class name
            (both would be ``pl_petune.methods.<Class>``), or a pattern does not compile.
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise RegistrationError(f"method name {name!r} is not lowercase [a-z][a-z0-9_]* (e.g. 'lora', 'bitfit_ehft')")
    patterns = (added,) if isinstance(added, str) else tuple(added)
    try:
        compiled = tuple(re.compile(p) for p in patterns)
    except (re.error, TypeError) as err:
        raise RegistrationError(f"method {name!r}: added pattern {patterns!r} does not compile: {err}") from None

    def decorate(cls: T) -> T:
        import lightning as L

        if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
            raise RegistrationError(f"method {name!r}: {cls!r} is not a LightningModule subclass")
        old = METHODS.get(name)
        if old is not None and not _same_definition(old, cls):
            raise RegistrationError(f"method name {name!r} is already registered to {_qual(old)}; "
                                    f"choose another name for {_qual(cls)}")
        if cls in _NAMES and _NAMES[cls] != name:
            raise RegistrationError(f"{_qual(cls)} is already registered as {_NAMES[cls]!r}; one name per class")
        twin = next((c for n, c in METHODS.items() if c.__name__ == cls.__name__ and n != name
                     and _exported(c) and _exported(cls)), None)
        if twin is not None:
            raise RegistrationError(f"class name {cls.__name__!r} of method {name!r} is already used by "
                                    f"{_qual(twin)} (method {_NAMES[twin]!r}); both would be "
                                    f"pl_petune.methods.{cls.__name__}")
        if old is not None:  # a reloaded module: the new definition replaces the old one
            _NAMES.pop(old, None)
            _ADDED.pop(old, None)
        METHODS[name] = cls
        _NAMES[cls] = name
        _ADDED[cls] = compiled
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove method ``name`` from the registry (for tests and plugins that register temporary methods)."""
    cls = METHODS.pop(name, None)
    if cls is not None:
        _NAMES.pop(cls, None)
        _ADDED.pop(cls, None)


def get_method(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        ConfigError: no method has that name; the message lists the known ones.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def registered_name(cls: type) -> str | None:
    """The name ``cls`` itself is registered under (not inherited), or ``None``."""
    return _NAMES.get(cls)


def added_patterns(cls: type) -> tuple[re.Pattern[str], ...]:
    """The added-parameter patterns of ``cls``: its own registration's, else its nearest registered ancestor's."""
    for klass in cls.__mro__:
        if klass in _ADDED:
            return _ADDED[klass]
    return ()


class RegisteredName:
    """Descriptor for ``method_name``: the registry name of exactly this class, else the class's own name."""

    def __get__(self, instance: object, owner: type) -> str:
        return _NAMES.get(owner, owner.__name__)


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _exported(cls: type) -> bool:
    return cls.__module__.startswith("pl_petune.methods.")


def _same_definition(a: type, b: type) -> bool:
    return a is b or _qual(a) == _qual(b)
