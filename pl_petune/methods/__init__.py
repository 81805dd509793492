"""The methods: one LightningModule each, registered by name.

``METHODS`` maps a method's name (as in recipes, records and ``petune params --method``) to its class.
Adding a method: its module, one line here, one row in the shared test matrix, one recipe.
"""

from __future__ import annotations

from pl_petune.errors import ConfigError
from pl_petune.methods.base import ClassificationHead, FullFinetune, PetuneModule
from pl_petune.methods.cross_attention import CrossAttentionTuning
from pl_petune.methods.pet import IA3, Adapter, LoRA, PetLayerMethod, PrefixTuning, PromptTuning
from pl_petune.methods.selective import (BitFit, FFNOnly, Frozen, LayerNormTuning, LinearProbe, MHAOnly,
                                         RandomSubset, TopK)

METHODS: dict[str, type[PetuneModule]] = {
    cls.method_name: cls
    for cls in (FullFinetune, Adapter, PrefixTuning, PromptTuning, LoRA, IA3, BitFit, FFNOnly, MHAOnly,
                LayerNormTuning, RandomSubset, Frozen, LinearProbe, TopK, CrossAttentionTuning)
}


def get_method(name: str) -> type[PetuneModule]:
    """The class registered as ``name``; raises :class:`ConfigError` naming the known methods."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "get_method", "PetuneModule", "FullFinetune", "ClassificationHead", "PetLayerMethod",
           "Adapter", "PrefixTuning", "PromptTuning", "LoRA", "IA3", "BitFit", "FFNOnly", "MHAOnly",
           "LayerNormTuning", "RandomSubset", "Frozen", "LinearProbe", "TopK", "CrossAttentionTuning"]
