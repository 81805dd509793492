"""Loading a method's backbone: a hub id, a local folder, the offline MiniLM, or random weights of a known shape."""

from __future__ import annotations

from typing import Optional

import torch

from pl_petune.backbones import check_dropout_overrides, resolve_backbone
from pl_petune.errors import ConfigError

# Architectures with random weights, for parameter accounting without a download (``petune params``):
# ``config:bert-base`` is ``BertConfig()`` (bert-base-uncased's shape), ``config:roberta-base`` roberta-base's.
RANDOM_ARCHITECTURES = {
    "config:bert-base": ("bert", {}),
    "config:t5-small": ("t5", {}),  # T5Config() is t5-small's shape (encoder-decoder; cross_attention)
    "config:roberta-base": ("roberta", {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                                        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                                        "layer_norm_eps": 1e-5}),
}


def load_backbone(name: str, hidden_dropout: Optional[float] = None, attention_dropout: Optional[float] = None):
    """The backbone ``AutoModel`` for ``name``: a hub id, a local folder, the offline MiniLM, or one of
    :data:`RANDOM_ARCHITECTURES` (random weights). Under ``torch.device("meta")`` only shapes are built."""
    from transformers import AutoConfig, AutoModel

    kwargs = {}
    if hidden_dropout is not None:
        kwargs["hidden_dropout_prob"] = hidden_dropout
    if attention_dropout is not None:
        kwargs["attention_probs_dropout_prob"] = attention_dropout
    if name.startswith("config:"):
        if name not in RANDOM_ARCHITECTURES:
            raise ConfigError(f"unknown random architecture {name!r}; known: {', '.join(RANDOM_ARCHITECTURES)}")
        model_type, fields = RANDOM_ARCHITECTURES[name]
        return AutoModel.from_config(AutoConfig.for_model(model_type, **fields, **kwargs))
    path = resolve_backbone(name)
    config = AutoConfig.from_pretrained(path, **kwargs)
    check_dropout_overrides(config, kwargs)
    if torch.empty(0).device.type == "meta":  # shapes only (parameter accounting): no weights to read
        return AutoModel.from_config(config)
    return AutoModel.from_pretrained(path, config=config)


__all__ = ["load_backbone", "RANDOM_ARCHITECTURES"]
