"""Selection-based methods: a subset of the pretrained backbone trains, nothing is added.

Every class resolves its trainable set with the one shared mechanism,
:class:`pl_petune.callbacks.selection.ParamSelector` (name regexes and module types → explicit names), the
same the freezing callbacks use. Names are those of the module's ``named_parameters()``
(``backbone.encoder.layer.3.attention.self.query.weight``, ``head.net.1.bias``); the patterns follow the
BERT/RoBERTa family layout in Hugging Face transformers and a selection that matches nothing raises.

The head always trains (except where noted) and the backbone's pooler, unused by our head, never does.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from pl_petune.callbacks.selection import ParamSelector
from pl_petune.errors import ConfigError
from pl_petune.methods.base import PetuneModule
from pl_petune.methods.registry import register_method

HEAD = r"^head\."
POOLER = r"^backbone\.pooler\."
LAYER = r"^backbone\.encoder\.layer\.\d+\."
MHA = LAYER + r"attention\.(?:self\.(?:query|key|value)|output\.dense)\."
FFN = LAYER + r"(?:intermediate\.dense|output\.dense)\."
LN_ATTENTION = LAYER + r"attention\.output\.LayerNorm\."
LN_FFN = LAYER + r"output\.LayerNorm\."
# EH-FT's six per-layer bias types (SwissArmyTransformer names → HF BERT/RoBERTa names): query_key_value
# (query, key, value), attention.dense, dense_h_to_4h, dense_4h_to_h, input_layernorm, post_attention_layernorm.
EHFT_BIASES = LAYER + (r"(?:attention\.self\.(?:query|key|value)|attention\.output\.dense|intermediate\.dense|"
                       r"output\.dense|attention\.output\.LayerNorm|output\.LayerNorm)\.bias$")
LN_VARIANTS = {"all": (LN_ATTENTION, LN_FFN), "attention": (LN_ATTENTION,), "ffn": (LN_FFN,)}


def resolve(module: torch.nn.Module, *patterns: str, head: bool = True, **selector: Any) -> set[str]:
    """Names matching any of ``patterns`` (plus the head), never the pooler, via :class:`ParamSelector`."""
    names = set(ParamSelector(include=patterns, exclude=(POOLER,), **selector).resolve(module))
    if head:
        names |= set(ParamSelector(include=(HEAD,)).resolve(module))
    return names


@register_method("bitfit")
class BitFit(PetuneModule):
    """BitFit (Ben Zaken et al., 2022): only bias terms train, b ← b − η∇b, weights frozen.

    Args:
        variant: ``all`` (PETuning: every backbone bias, the embedding LayerNorm's included, plus the head)
            or ``ehft`` (EH-FT: per layer the biases of query, key, value, attention output, both
            feed-forward Linears and both LayerNorms, plus the head; no embedding bias).
        **kwargs: the base module's arguments (:class:`~pl_petune.methods.base.PetuneModule`).
    """

    VARIANTS = ("all", "ehft")

    def __init__(self, variant: str = "all", **kwargs: Any) -> None:
        if variant not in self.VARIANTS:
            raise ConfigError(f"unknown bitfit variant {variant!r}; known: {', '.join(self.VARIANTS)}")
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        if self.hparams.variant == "all":
            return resolve(self, r"^backbone\.", bias_only=True)
        return resolve(self, EHFT_BIASES)


@register_method("ffn")
class FFNOnly(PetuneModule):
    """Feed-forward only (AkbarTajari et al., 2022, "Feed-Forward"): every layer's intermediate and output
    dense Linears (weights and biases, no LayerNorm) and the head train.

    Args:
        **kwargs: the base module's arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        return resolve(self, FFN)


@register_method("mha")
class MHAOnly(PetuneModule):
    """Multi-head attention only (AkbarTajari et al., 2022, "Multi-Head"): every layer's query, key, value
    and attention output dense Linears (no LayerNorm) and the head train.

    Args:
        **kwargs: the base module's arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        return resolve(self, MHA)


@register_method("layernorm")
class LayerNormTuning(PetuneModule):
    """LayerNorm tuning (AkbarTajari et al., 2022): the encoder's LayerNorm gains and biases and the head
    train (the embedding LayerNorm does not).

    Args:
        variant: ``all`` (both LayerNorms of every layer, "LayerNorms"), ``attention`` (after attention,
            "LayerNorms_A") or ``ffn`` (after the feed-forward block, "LayerNorms_F").
        layers: only these layer indices (negative counts from the top); the paper's layer-wise study
            trains one layer's LayerNorms, ``layers: [k]``. ``None``: every layer.
        **kwargs: the base module's arguments.
    """

    def __init__(self, variant: str = "all", layers: Optional[list[int]] = None, **kwargs: Any) -> None:
        if variant not in LN_VARIANTS:
            raise ConfigError(f"unknown layernorm variant {variant!r}; known: {', '.join(LN_VARIANTS)}")
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        hp = self.hparams
        try:
            return resolve(self, *LN_VARIANTS[hp.variant], layers=hp.layers)
        except ValueError as err:
            raise ConfigError(f"layernorm layers {hp.layers!r}: {err}") from None


@register_method("topk")
class TopK(PetuneModule):
    """Top-K layers (EH-FT's ``all[i-j]`` baseline): the top ``k`` transformer layers and the head train.

    Args:
        k: number of top encoder layers that train (1 .. number of layers).
        **kwargs: the base module's arguments.
    """

    def __init__(self, k: int = 3, **kwargs: Any) -> None:
        if k < 1:
            raise ConfigError(f"topk k must be >= 1, got {k}")
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        k, n = self.hparams.k, self.backbone.config.num_hidden_layers
        if k > n:
            raise ConfigError(f"topk k={k} exceeds the backbone's {n} layers; allowed: 1..{n}")
        return resolve(self, LAYER, layers=list(range(n - k, n)))


@register_method("frozen")
class Frozen(PetuneModule):
    """Frozen backbone (AkbarTajari et al., 2022, "Frozen"): only the head trains; the backbone runs in train
    mode (its dropout is active), unlike :class:`LinearProbe`.

    Args:
        **kwargs: the base module's arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        return set(ParamSelector(include=(HEAD,)).resolve(self))


@register_method("linear_probe")
class LinearProbe(PetuneModule):
    """Linear probing (EH-FT's ``head`` baseline; the LP of LP-FT): only the head trains, on features of the
    backbone kept in eval mode (no dropout) and run under ``no_grad`` (no activation memory, ~4x faster).

    Args:
        **kwargs: the base module's arguments (``head: linear`` gives a strictly linear probe).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        return set(ParamSelector(include=(HEAD,)).resolve(self))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.no_grad():
            return super().encode(input_ids, attention_mask, token_type_ids)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()
        return self


@register_method("random")
class RandomSubset(PetuneModule):
    """Random (AkbarTajari et al., 2022): a seeded random subset of ``size`` backbone parameter *entries*
    (scalars) and the head train.

    The paper does not say how its subset is drawn; we draw entries uniformly without replacement from every
    backbone parameter except the pooler, with ``init_seed``, so the budget can match any other selection
    exactly (default: as many entries as the encoder's LayerNorms hold, the paper's best module). A tensor
    holding a chosen entry gets ``requires_grad``; a gradient hook zeroes the other entries' gradients, and
    those tensors get no weight decay, so only the chosen entries ever change.

    Args:
        size: number of backbone entries that train (``None``: the encoder LayerNorm count).
        **kwargs: the base module's arguments.
    """

    def __init__(self, size: Optional[int] = None, **kwargs: Any) -> None:
        if size is not None and size < 1:
            raise ConfigError(f"random size must be >= 1, got {size}")
        super().__init__(**kwargs)

    def configure_method(self) -> None:
        pool = [(n, p) for n, p in self.backbone.named_parameters() if not n.startswith("pooler.")]
        total = sum(p.numel() for _, p in pool)
        size = self.hparams.size
        if size is None:
            norms = resolve(self, *LN_VARIANTS["all"], head=False)
            size = sum(p.numel() for n, p in self.named_parameters() if n in norms)
        if size > total:
            raise ConfigError(f"random size {size} exceeds the {total} backbone entries it draws from")
        chosen = _sample_without_replacement(total, size)
        self._entry_index: dict[str, torch.Tensor] = {}
        start = 0
        for name, p in pool:
            stop = start + p.numel()
            lo, hi = torch.searchsorted(chosen, torch.tensor([start, stop], device="cpu")).tolist()
            if hi > lo:
                self._entry_index["backbone." + name] = chosen[lo:hi] - start
            start = stop
        for name, idx in self._entry_index.items():
            param = self.get_parameter(name)
            param.register_hook(_masking_hook(idx))

    def select_trainable(self) -> set[str]:
        return set(self._entry_index) | set(ParamSelector(include=(HEAD,)).resolve(self))

    def trainable_entries(self) -> dict[str, torch.Tensor]:
        """For each partly trained tensor, the flat indices of its entries that train."""
        return dict(self._entry_index)

    def parameter_report(self) -> dict[str, Any]:
        report = super().parameter_report()
        partial = sum(self.get_parameter(n).numel() - len(i) for n, i in self._entry_index.items())
        report["trainable_params"] -= partial
        report["trainable_backbone_params"] -= partial
        for key, count in (("trainable_percent", "trainable_params"),
                           ("trainable_backbone_percent", "trainable_backbone_params")):
            report[key] = 100.0 * report[count] / report["total_params"]
        return report

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        masked = {id(self.get_parameter(n)) for n in self._entry_index}
        out = []
        for g in groups:
            keep = [p for p in g["params"] if id(p) not in masked]
            moved = [p for p in g["params"] if id(p) in masked]
            if keep:
                out.append({**g, "params": keep})
            if moved:  # decoupled weight decay would move the masked-out entries
                out.append({**g, "params": moved, "weight_decay": 0.0})
        return out


def _masking_hook(index: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        flat = torch.zeros_like(grad).view(-1)
        idx = index.to(grad.device)
        flat[idx] = grad.reshape(-1)[idx]
        return flat.view_as(grad)

    return hook


def _sample_without_replacement(total: int, size: int) -> torch.Tensor:
    """``size`` distinct sorted indices in ``[0, total)``, uniformly, from the (seeded) global torch RNG.

    Draws in batches and keeps first occurrences, so memory stays O(size) even for 10^8 entries.
    """
    if size * 2 >= total:
        return torch.randperm(total, device="cpu")[:size].sort().values
    seen: dict[int, None] = {}
    while len(seen) < size:
        for i in torch.randint(total, (size - len(seen) + 64,), device="cpu").tolist():
            seen.setdefault(i, None)
            if len(seen) == size:
                break
    return torch.tensor(sorted(seen), dtype=torch.long, device="cpu")


__all__: Sequence[str] = ("BitFit", "FFNOnly", "MHAOnly", "LayerNormTuning", "TopK", "Frozen", "LinearProbe",
                          "RandomSubset")
