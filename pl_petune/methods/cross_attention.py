"""Cross-attention-only tuning for encoder-decoder backbones (the T5 family).

Gheini et al. (EMNLP 2021, "Cross-Attention is All You Need"), the module-wise baseline the transferability
study (AkbarTajari et al., 2022) starts from: in every decoder block only the encoder-decoder attention's
query, key, value and output projections train, W_{q,k,v,o} ← W − η∇W, plus the classification head; the
encoder, the decoder's self-attention and feed-forward layers, every LayerNorm and the shared embedding stay
frozen.

The head follows Hugging Face's ``T5ForSequenceClassification``: the decoder reads the input shifted right
(``decoder_start_token_id`` first) and the head reads the decoder's last hidden state at the input's final
token (T5's EOS ``</s>``). With right padding that is the last position the attention mask keeps, which is
how it is found here, so any tokenizer that ends the sequence with its own end token works.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pl_petune.errors import ConfigError
from pl_petune.methods.base import PetuneModule
from pl_petune.methods.registry import register_method
from pl_petune.methods.selective import resolve

CROSS_ATTENTION = r"^backbone\.decoder\.block\.\d+\.layer\.1\.EncDecAttention\.(?:q|k|v|o)\."


@register_method("cross_attention")
class CrossAttentionTuning(PetuneModule):
    """Only the decoder's cross-attention (every block's ``EncDecAttention`` q, k, v, o) and the head train.

    Args:
        **kwargs: the base module's arguments (:class:`~pl_petune.methods.base.PetuneModule`); ``backbone``
            must be an encoder-decoder (``t5-small``, ``t5-base``, a local T5 folder, or ``config:t5-small``
            for parameter accounting).

    Raises:
        ConfigError: the backbone is not an encoder-decoder model.
    """

    requires_encoder_decoder = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def configure_method(self) -> None:
        config = self.backbone.config
        if not getattr(config, "is_encoder_decoder", False):
            raise ConfigError(f"cross_attention needs an encoder-decoder backbone (T5 family); "
                              f"{self.hparams.backbone!r} is a {config.model_type!r} encoder; use e.g. t5-small")  # type: ignore[attr-defined]

    def select_trainable(self) -> set[str]:
        return resolve(self, CROSS_ATTENTION)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoder's last hidden state at the final kept token (T5's EOS), as T5ForSequenceClassification."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            decoder_input_ids=self.backbone._shift_right(input_ids),
                            decoder_attention_mask=attention_mask)
        last = attention_mask.long().sum(-1) - 1
        return out.last_hidden_state[torch.arange(len(last), device=last.device), last]
