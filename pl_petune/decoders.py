"""Decoder (causal LM) backbones as classifiers: which token the head reads, and positions under padding.

An encoder's head reads the first kept token ([CLS] / <s>); a causal LM's last hidden state at the *last kept*
token is the only one that has seen the whole input (Hugging Face's ``*ForSequenceClassification`` for Llama,
Qwen2, Mistral and GPT-2 read the same token). Both are found from the attention mask, never from pad token ids:
a tokenizer without a pad token pads with its EOS (:func:`pl_petune.backbones.load_tokenizer`), and a search for
the first pad id would then stop at a real EOS. The mask works for either padding side.

Positions: a causal LM numbers positions 0, 1, ... from the first column, so a left-padded row would start its
text at position k. :func:`decoder_inputs` passes ``position_ids`` counted over kept tokens only (as
``generate`` does), so a row gives the same features whichever side it is padded on.
"""

from __future__ import annotations

from typing import Any

import torch


def is_causal_lm(config: Any) -> bool:
    """Whether a backbone config is a decoder-only causal LM (Llama, Qwen2, Mistral, GPT-2, ...): its model type
    has a causal-LM head in transformers and no masked-LM one (BERT-like encoders have both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    mtype = getattr(config, "model_type", "")
    return mtype in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mtype not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def kept_positions(attention_mask: torch.Tensor, last: bool) -> torch.Tensor:
    """Per row, the index of the first (``last=False``) or last (``last=True``) position the mask keeps."""
    mask = attention_mask.long()
    if last:
        return mask.shape[-1] - 1 - mask.flip(-1).argmax(-1)
    return mask.argmax(-1)


def pool_features(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The features the head reads from ``hidden`` (batch × length × width): the last kept token of a causal
    LM, the first kept token of an encoder."""
    idx = kept_positions(attention_mask, last=is_causal_lm(config))
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx.to(hidden.device)]


def decoder_inputs(config: Any, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Extra forward arguments for a causal LM: ``position_ids`` counted over kept tokens (0 at each row's
    first kept token), so padding on either side gives the same features; nothing for an encoder."""
    if not is_causal_lm(config):
        return {}
    mask = attention_mask.long()
    return {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
