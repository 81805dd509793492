"""The methods: one LightningModule each, registered by name.

``METHODS`` maps a method's name (as in recipes, records and ``petune params --method``) to its class.
Adding a method: its module, one line here, one row in the shared test matrix, one recipe.
"""

from __future__ import annotations

from pl_petune.errors import ConfigError
from pl_petune.methods.base import ClassificationHead, FullFinetune, PetuneModule

METHODS: dict[str, type[PetuneModule]] = {
    "finetune": FullFinetune,
}


def get_method(name: str) -> type[PetuneModule]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "get_method", "PetuneModule", "FullFinetune", "ClassificationHead"]
