"""Selection-based methods: a subset of the pretrained backbone trains, nothing is added.

Every class resolves its trainable set with the one shared mechanism,
:class:`pl_petune.callbacks.selection.ParamSelector` (name regexes and module types → explicit names), the
same the freezing callbacks use. Names are those of the module's ``named_parameters()``
(``backbone.encoder.layer.3.attention.self.query.weight``, ``head.net.1.bias``); the patterns follow the
BERT/RoBERTa family layout in Hugging Face transformers and a selection that matches nothing raises.

The head always trains (except where noted) and the backbone's pooler, unused by our head, never does.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

import torch

from pl_petune.argtypes import PositiveInt
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

    def __init__(self, variant: Literal["all", "ehft"] = "all", **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        if self.hparams.variant == "all":  # type: ignore[attr-defined]
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

    def __init__(self, variant: Literal["all", "attention", "ffn"] = "all", layers: Optional[list[int]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        hparams = self.hparams
        try:
            return resolve(self, *LN_VARIANTS[hparams.variant], layers=hparams.layers)  # type: ignore[attr-defined]
        except ValueError as err:
            raise ConfigError(f"layernorm layers {hparams.layers!r}: {err}") from None  # type: ignore[attr-defined]


@register_method("topk")
class TopK(PetuneModule):
    """Top-K layers (EH-FT's ``all[i-j]`` baseline): the top ``k`` transformer layers and the head train.

    Args:
        k: number of top encoder layers that train (1 .. number of layers).
        **kwargs: the base module's arguments.
    """

    def __init__(self, k: PositiveInt = 3, **kwargs: Any) -> None:  # type: ignore[assignment]
        super().__init__(**kwargs)

    def select_trainable(self) -> set[str]:
        k, n = self.hparams.k, self.backbone.config.num_hidden_layers  # type: ignore[attr-defined]
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

    The paper does not say how its subset is drawn; we draw entries uniformly without replacement with
    ``init_seed``, so the budget can match any other selection exactly (default: as many entries as the
    encoder's LayerNorms hold, the paper's best module). A tensor holding a chosen entry gets
    ``requires_grad``; a gradient hook zeroes the other entries' gradients, and those tensors get no weight
    decay, so only the chosen entries ever change.

    Nominal vs effective budget: drawn from the whole backbone (``draw_from: backbone``), about a fifth of
    the entries land in the embedding matrices (BERT-base: 21.5 %), mostly in rows of tokens, positions or
    segments no training example uses; those entries never receive a gradient. The module counts, during
    fit, the chosen entries that received a non-zero gradient at least once, and reports both numbers
    (``random_entries_nominal``, ``random_entries_effective`` in the parameter report and the run record).
    ``draw_from: encoder`` draws from the encoder layers only, where every entry receives a gradient.

    Args:
        size: number of backbone entries that train (``None``: the encoder LayerNorm count).
        draw_from: ``backbone`` (default: every backbone parameter but the pooler) or ``encoder`` (the encoder
            layers only, no embedding matrices).
        **kwargs: the base module's arguments.
    """

    def __init__(self, size: Optional[PositiveInt] = None, draw_from: Literal["backbone", "encoder"] = "backbone",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def _pool(self) -> list[tuple[str, torch.nn.Parameter]]:
        keep = ((lambda n: not n.startswith("pooler.")) if self.hparams.draw_from == "backbone"  # type: ignore[attr-defined]
                else (lambda n: n.startswith("encoder.layer.")))
        pool = [(n, p) for n, p in self.backbone.named_parameters() if keep(n)]
        if not pool:
            raise ConfigError(f"random draw_from {self.hparams.draw_from!r}: the backbone has no such parameters")  # type: ignore[attr-defined]
        return pool

    def configure_method(self) -> None:
        pool = self._pool()
        total = sum(p.numel() for _, p in pool)
        size = self.hparams.size  # type: ignore[attr-defined]
        if size is None:
            norms = resolve(self, *LN_VARIANTS["all"], head=False)
            size = sum(p.numel() for n, p in self.named_parameters() if n in norms)
        if size > total:
            raise ConfigError(f"random size {size} exceeds the {total} backbone entries it draws from "
                              f"(draw_from {self.hparams.draw_from}); allowed: 1..{total}")  # type: ignore[attr-defined]
        chosen = _sample_without_replacement(total, size)
        self._entry_index: dict[str, torch.Tensor] = {}
        start = 0
        for name, p in pool:
            stop = start + p.numel()
            lo, hi = torch.searchsorted(chosen, torch.tensor([start, stop], device="cpu")).tolist()
            if hi > lo:
                self._entry_index["backbone." + name] = chosen[lo:hi] - start
            start = stop
        self._reached: dict[str, torch.Tensor] = {n: torch.zeros(len(i), dtype=torch.bool)
                                                  for n, i in self._entry_index.items()}
        self._any_backward = False
        for name, idx in self._entry_index.items():
            param = self.get_parameter(name)
            param.register_hook(_masking_hook(idx, self._mark_reached(name)))

    def _mark_reached(self, name: str):
        def mark(reached: torch.Tensor) -> None:
            self._any_backward = True
            self._reached[name] |= reached.cpu()

        return mark

    def select_trainable(self) -> set[str]:
        return set(self._entry_index) | set(ParamSelector(include=(HEAD,)).resolve(self))

    def trainable_entries(self) -> dict[str, torch.Tensor]:
        """For each partly trained tensor, the flat indices of its entries that train."""
        return dict(self._entry_index)

    def effective_entries(self) -> Optional[int]:
        """Chosen entries that received a non-zero gradient at least once (``None`` before any backward)."""
        if not self._any_backward:
            return None
        return int(sum(int(r.sum()) for r in self._reached.values()))

    def parameter_report(self) -> dict[str, Any]:
        report = super().parameter_report()
        partial = sum(self.get_parameter(n).numel() - len(i) for n, i in self._entry_index.items())
        report["trainable_params"] -= partial
        report["trainable_backbone_params"] -= partial
        for key, count in (("trainable_percent", "trainable_params"),
                           ("trainable_backbone_percent", "trainable_backbone_params")):
            report[key] = 100.0 * report[count] / report["total_params"]
        report.update(self.record_extra())
        return report

    def record_extra(self) -> dict[str, Any]:
        """Nominal and effective entry counts (the effective one is known once training has run)."""
        nominal = sum(len(i) for i in self._entry_index.values())
        embedded = sum(len(i) for n, i in self._entry_index.items() if n.startswith("backbone.embeddings."))
        return {"random_draw_from": self.hparams.draw_from, "random_entries_nominal": nominal,  # type: ignore[attr-defined]
                "random_entries_in_embeddings": embedded, "random_entries_effective": self.effective_entries()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["petune_random_reached"] = {"any": self._any_backward,
                                               "masks": {n: r.clone() for n, r in self._reached.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("petune_random_reached")
        if state is not None and set(state["masks"]) == set(self._reached):
            self._any_backward = bool(state["any"])
            for n, reached in state["masks"].items():
                self._reached[n] = reached.clone().to(torch.bool).cpu()

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        masked = {id(self.get_parameter(n)) for n in self._entry_index}
        out = []
        for group in groups:
            keep = [p for p in group["params"] if id(p) not in masked]
            moved = [p for p in group["params"] if id(p) in masked]
            if keep:
                out.append({**group, "params": keep})
            if moved:  # decoupled weight decay would move the masked-out entries
                out.append({**group, "params": moved, "weight_decay": 0.0})
        return out


def _masking_hook(index: torch.Tensor, on_reached=None):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        flat = torch.zeros_like(grad).view(-1)
        idx = index.to(grad.device)
        kept = grad.reshape(-1)[idx]
        flat[idx] = kept
        if on_reached is not None:
            on_reached(kept != 0)
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
