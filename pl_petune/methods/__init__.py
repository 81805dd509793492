"""The methods: one LightningModule each, registered by name.

Every module of this package is imported here, and each method module registers its methods with
:func:`~pl_petune.methods.registry.register_method` (``base``'s helpers ``head``, ``backbone`` and ``seeding``
register none); ``METHODS`` maps a method's name (as in recipes, records
and ``petune params --method``) to its class, and every registered class is importable as
``pl_petune.methods.<Class>`` (the recipes' ``class_path``). Adding a method: its module (with its one
registration), one row in the shared test matrix, one recipe.
"""

from __future__ import annotations

import importlib
import pkgutil

from pl_petune.methods.base import ClassificationHead, PetuneModule
from pl_petune.methods.pet import PetLayerMethod
from pl_petune.methods.registry import METHODS, get_method, register_method

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

globals().update({cls.__name__: cls for cls in METHODS.values()})

__all__ = ["METHODS", "get_method", "register_method", "PetuneModule", "ClassificationHead", "PetLayerMethod",
           *sorted(cls.__name__ for cls in METHODS.values())]
