"""Reading values out of a parsed config (a jsonargparse namespace or plain mappings), for the preflight checks."""

from __future__ import annotations

from typing import Any


def config_value(namespace: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``dotted`` (``"trainer.max_epochs"``), or ``default`` when a part is missing or None."""
    current = namespace
    for part in dotted.split("."):
        if current is None:
            return default
        current = current.get(part) if hasattr(current, "get") else getattr(current, part, None)
    return default if current is None else current


def is_whole_number(value: Any) -> bool:
    """An int that is not a bool (YAML's ``true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["config_value", "is_whole_number"]
