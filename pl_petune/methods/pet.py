"""Methods that add PET layers to the backbone: bottleneck adapters, prefix tuning, prompt tuning, IA3
(AdapterHub ``adapters``) and LoRA (Hugging Face PEFT).

Which library backs which method, and why:

- ``adapters`` (AdapterHub) backs adapter, prefix, prompt and IA3: it runs all four forward and backward on
  BERT and RoBERTa (REFERENCE §8), its prefix tuning is encoder-native (PEFT's fails on RoBERTa, the
  Revisiting paper's backbone) and it applies dropout to the prefix key/values as the PETuning code does.
  PEFT has no bottleneck adapter.
- PEFT backs LoRA: ``adapters`` wraps only Q, K and V of BERT-family attention, while EH-FT adapts the
  attention output projection too (Q, K, V, O); PEFT targets any Linear by name and merges in place.

Every class here keeps the common contract for warm-start callbacks (EH-FT's stage switch):
:meth:`PetLayerMethod.pet_parameter_names` lists the added parameters and
:meth:`PetLayerMethod.drop_pet_layers` removes them, leaving the pretrained backbone and the trained head.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from pl_petune.argtypes import PositiveFloat, PositiveInt, Probability
from pl_petune.callbacks.selection import ParamSelector
from pl_petune.errors import ConfigError
from pl_petune.methods.base import PetuneModule
from pl_petune.methods.registry import added_patterns, register_method

ADAPTER_NAME = "petune"
# Activations AdapterHub accepts for an adapter (transformers' ACT2FN names, plus its own leakyrelu).
NonLinearity = Literal["relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "silu",
                       "swish", "tanh", "sigmoid", "mish", "leakyrelu", "linear"]
LoraTarget = Literal["q", "k", "v", "o", "ffn_in", "ffn_out"]


class PetLayerMethod(PetuneModule):
    """Thin shared part of the methods that add layers: the trainable set is the added layers plus the head.

    Subclasses register with their ``added`` patterns (regexes over ``named_parameters()`` names of the module,
    :func:`~pl_petune.methods.registry.register_method`) and implement :meth:`configure_method` and
    :meth:`drop_pet_layers`.
    """

    def select_trainable(self) -> set[str]:
        """The added PET parameters and the head; the whole pretrained backbone is frozen."""
        added = tuple(p.pattern for p in added_patterns(type(self)))
        return set(ParamSelector(include=(r"^head\.", *added)).resolve(self))

    def pet_parameter_names(self) -> list[str]:
        """Names (in ``named_parameters()`` of the module) of the parameters the method added."""
        return [n for n, _ in self.named_parameters() if self._is_added(n)]

    def drop_pet_layers(self) -> None:
        """Remove the added layers: the backbone becomes the plain pretrained architecture again (its weights as
        they are, frozen), the head stays as trained. Used by EH-FT's stage switch (head warm start)."""
        raise NotImplementedError

    def record_extra(self) -> dict[str, Any]:
        return {"pet_library": self.pet_library}

    pet_library = ""


class _AdapterHubMethod(PetLayerMethod):
    """A method whose layer is one AdapterHub ``adapters`` config, added under the name ``petune``."""

    pet_library = "adapters"

    def adapter_config(self):
        raise NotImplementedError

    def configure_method(self) -> None:
        import adapters

        kind = getattr(self.backbone.config, "model_type", "?")
        try:
            adapters.init(self.backbone)
        except Exception as err:  # adapters raises a bare ValueError/KeyError for unsupported models
            raise ConfigError(f"method {self.method_name!r} (AdapterHub adapters) does not support backbone "
                              f"type {kind!r}: {err}") from None
        self.backbone.add_adapter(ADAPTER_NAME, config=self.adapter_config(), set_active=True)
        # train_adapter also flips adapter-internal training switches; the exact trainable set is still
        # decided by select_trainable afterwards.
        self.backbone.train_adapter(ADAPTER_NAME)
        self.backbone.set_active_adapters(ADAPTER_NAME)

    def drop_pet_layers(self) -> None:
        """Replace the backbone with a plain Hugging Face model (no ``adapters`` wrappers, no aliases in its
        state dict) holding the current backbone weights, all frozen; the head is kept."""
        from pl_petune.methods.base import load_backbone, seeded

        state = self.backbone.state_dict()
        # mid-fit (EH-FT's stage switch): whatever building the model draws must not move the dropout stream
        with seeded(self.hparams.init_seed):  # type: ignore[attr-defined]
            plain = load_backbone(self.hparams.backbone, self.hparams.hidden_dropout)  # type: ignore[attr-defined]
        plain.load_state_dict({k: state[k] for k in plain.state_dict()})
        plain.requires_grad_(False)
        plain.train(self.backbone.training)
        self.backbone = plain


@register_method("adapter", added=r"\.adapters\." + ADAPTER_NAME + r"\.")
class Adapter(_AdapterHubMethod):
    """Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): h ← h + W_up·f(W_down·h).

    ``pfeiffer`` (PETuning's choice; AdapterHub ``SeqBnConfig``): one adapter after each layer's feed-forward
    block, ReLU. ``houlsby`` (``DoubleSeqBnConfig``): one after attention and one after the feed-forward
    block, swish. The bottleneck is ``hidden // reduction_factor`` (PETuning: 2, 16 or 64).

    Args:
        variant: ``pfeiffer`` or ``houlsby``.
        reduction_factor: hidden size divided by the bottleneck size.
        non_linearity: activation inside the adapter (``None``: the variant's own, relu / swish).
        init: ``identity`` (up-projection zero, so the model starts as the frozen backbone; AdapterHub
            ``mam_adapter``), ``bert`` (both projections N(0, 0.02), adapter-transformers 2.2's default
            that PETuning ran) or ``houlsby`` (both N(0, 0.01) truncated, near-identity).
        **kwargs: the base module's arguments (:class:`~pl_petune.methods.base.PetuneModule`).
    """

    VARIANTS = ("pfeiffer", "houlsby")
    INITS = {"identity": "mam_adapter", "bert": "bert", "houlsby": "houlsby"}

    def __init__(self, variant: Literal["pfeiffer", "houlsby"] = "pfeiffer", reduction_factor: PositiveInt = 16,  # type: ignore[assignment]
                 non_linearity: Optional[NonLinearity] = None,
                 init: Literal["identity", "bert", "houlsby"] = "identity", **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def adapter_config(self):
        from adapters import DoubleSeqBnConfig, SeqBnConfig

        hparams = self.hparams
        cls = SeqBnConfig if hparams.variant == "pfeiffer" else DoubleSeqBnConfig
        extra = {"non_linearity": hparams.non_linearity} if hparams.non_linearity else {}
        return cls(reduction_factor=hparams.reduction_factor, init_weights=self.INITS[hparams.init], **extra)


@register_method("prefix", added=r"prefix_tuning\.pool\.prefix_tunings\." + ADAPTER_NAME + r"\.")
class PrefixTuning(_AdapterHubMethod):
    """Deep prefix tuning (Li & Liang, 2021; P-tuning v2): trainable keys and values prepended in every layer.

    Flat (PETuning's default, ``prefix_projection=False``) trains the L·2·len·hidden key/value entries
    directly; with ``reparametrize`` they are produced by an MLP (embedding → Linear(hidden, bottleneck) →
    tanh → Linear) that is trained instead. Dropout is applied to the prefix key/values (the PETuning code
    applies the hidden dropout, 0.1). Backed by AdapterHub ``PrefixTuningConfig``, which works on RoBERTa
    (PEFT's prefix tuning does not).

    Args:
        prefix_length: number of prefix positions per layer (PETuning: 8, 16, 32 or 64).
        reparametrize: produce the prefix through an MLP (P-tuning v2's ``prefix_projection``).
        bottleneck_size: hidden size of that MLP.
        prefix_dropout: dropout on the prefix key/values.
        prefix_init_std: initialise the flat prefix as N(0, std²) under ``init_seed``. ``None`` (default)
            keeps AdapterHub's ``randn`` (std 1); EH-FT's parity value is 0.01 (its ``torch.randn(...) * 0.01``,
            REFERENCE §10). Only for the flat prefix (``reparametrize`` false).
        **kwargs: the base module's arguments.
    """

    def __init__(self, prefix_length: PositiveInt = 8, reparametrize: bool = False, bottleneck_size: PositiveInt = 512,  # type: ignore[assignment]
                 prefix_dropout: Probability = 0.1, prefix_init_std: Optional[PositiveFloat] = None,  # type: ignore[assignment]
                 **kwargs: Any) -> None:
        if prefix_init_std is not None and reparametrize:
            raise ConfigError(f"prefix_init_std {prefix_init_std} applies to the flat prefix only; with "
                              "reparametrize true the prefix comes from an MLP: leave prefix_init_std unset")
        super().__init__(**kwargs)

    def configure_method(self) -> None:
        super().configure_method()
        std = self.hparams.get("prefix_init_std")
        if std is not None:  # runs under init_seed (PetuneModule.__init__), like every new parameter
            with torch.no_grad():
                for name, param in self.named_parameters():
                    if self._is_added(name):
                        param.normal_(0.0, std)

    def adapter_config(self):
        from adapters import PrefixTuningConfig

        hparams = self.hparams
        return PrefixTuningConfig(prefix_length=hparams.prefix_length, flat=not hparams.reparametrize,
                                  bottleneck_size=hparams.bottleneck_size, dropout=hparams.prefix_dropout)


@register_method("prompt", added=r"prompt_tuning\.prompt_tunings\." + ADAPTER_NAME + r"\.")
class PromptTuning(_AdapterHubMethod):
    """Prompt tuning (Lester et al., 2021): ``prompt_length`` trainable input embeddings, inserted right after
    the first token ([CLS] / <s>) so the head still reads that token. Backed by AdapterHub
    ``PromptTuningConfig`` (``combine="prefix_after_bos"``), which also extends the attention mask.

    Args:
        prompt_length: number of soft prompt tokens.
        **kwargs: the base module's arguments.
    """

    def __init__(self, prompt_length: PositiveInt = 20, **kwargs: Any) -> None:  # type: ignore[assignment]
        super().__init__(**kwargs)

    def adapter_config(self):
        from adapters import PromptTuningConfig

        hparams = self.hparams
        # The prompt starts uniform in [-0.5, 0.5] (Lester et al.'s scale; fixed in adapters 1.3).
        return PromptTuningConfig(prompt_length=hparams.prompt_length, combine="prefix_after_bos")


@register_method("ia3", added=r"\.loras\." + ADAPTER_NAME + r"\.")
class IA3(_AdapterHubMethod):
    """(IA)^3 (Liu et al., 2022): learned vectors rescale keys, values and the feed-forward activations,
    k ← l_k ⊙ k, v ← l_v ⊙ v, h_ff ← l_ff ⊙ h_ff; the vectors start at one, so the model starts as the
    frozen backbone. Beyond the three papers. Backed by AdapterHub ``IA3Config``.

    Args:
        attn_matrices: attention projections to rescale, from ``q``, ``k``, ``v`` (IA3: k and v).
        feedforward: also rescale the intermediate feed-forward activations.
        **kwargs: the base module's arguments.
    """

    def __init__(self, attn_matrices: list[Literal["q", "k", "v"]] = ["k", "v"], feedforward: bool = True,
                 **kwargs: Any) -> None:
        bad = [m for m in attn_matrices if m not in ("q", "k", "v")]
        if bad or not (attn_matrices or feedforward):
            raise ConfigError(f"ia3 attn_matrices {attn_matrices!r} must be a non-empty list from q, k, v "
                              "(or set feedforward)")
        super().__init__(**kwargs)

    def adapter_config(self):
        from adapters import IA3Config

        hparams = self.hparams
        return IA3Config(attn_matrices=list(hparams.attn_matrices), intermediate_lora=hparams.feedforward,
                         selfattn_lora=bool(hparams.attn_matrices))


# Short names of the Linear layers LoRA can adapt, as regexes over BERT/RoBERTa module names.
LORA_TARGETS = {
    "q": r"attention\.self\.query",
    "k": r"attention\.self\.key",
    "v": r"attention\.self\.value",
    "o": r"attention\.output\.dense",
    "ffn_in": r"intermediate\.dense",
    "ffn_out": r"layer\.\d+\.output\.dense",
}


@register_method("lora", added=r"\.lora_(?:A|B)\.")
class LoRA(PetLayerMethod):
    """LoRA (Hu et al., 2022): W x + (α/r)·B A x on chosen Linear layers, A kaiming-uniform, B zero, so the
    model starts as the frozen backbone. Backed by PEFT (``inject_adapter_in_model``) because it adapts any
    Linear by name, including the attention output (EH-FT's Q, K, V, O); ``adapters`` covers Q, K, V only.

    Args:
        r: rank.
        alpha: scaling numerator (scale α/r). PETuning: r 8, α 8 or 16; EH-FT: r 8, α 16.
        dropout: dropout on the LoRA input.
        targets: layers to adapt, from ``q``, ``k``, ``v``, ``o`` (attention output), ``ffn_in``,
            ``ffn_out``. Default query and value (PETuning); EH-FT uses ``[q, k, v, o]``.
        **kwargs: the base module's arguments.

    Call :meth:`merge` after training to fold B A into W for inference (no extra latency).
    """

    pet_library = "peft"

    def __init__(self, r: PositiveInt = 8, alpha: PositiveFloat = 16.0, dropout: Probability = 0.0,  # type: ignore[assignment]
                 targets: list[LoraTarget] = ["q", "v"], **kwargs: Any) -> None:
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets:
            raise ConfigError(f"unknown LoRA target(s) {bad or targets!r}; known: {', '.join(LORA_TARGETS)}")
        super().__init__(**kwargs)

    def configure_method(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        hparams = self.hparams
        pattern = r".*(?:" + "|".join(LORA_TARGETS[t] for t in hparams.targets) + r")$"  # type: ignore[attr-defined]
        config = LoraConfig(r=hparams.r, lora_alpha=hparams.alpha, lora_dropout=hparams.dropout, target_modules=pattern,  # type: ignore[attr-defined]
                            bias="none")
        try:
            inject_adapter_in_model(config, self.backbone, adapter_name="default")
        except ValueError as err:
            raise ConfigError(f"LoRA targets {list(hparams.targets)!r} match no layer of backbone "  # type: ignore[attr-defined]
                              f"{self.hparams.backbone!r}: {str(err).splitlines()[0]}") from None  # type: ignore[attr-defined]

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        return [m for m in self.backbone.modules() if isinstance(m, LoraLayer)]

    def merge(self) -> None:
        """Fold the LoRA update into the frozen weights (W ← W + (α/r)·B A) for inference; idempotent."""
        for layer in self._lora_layers():
            if not layer.merged:
                layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge` (to train further)."""
        for layer in self._lora_layers():
            if layer.merged:
                layer.unmerge()

    def drop_pet_layers(self) -> None:
        """Replace every LoRA layer with its frozen base Linear, unmerged (the pretrained weights)."""
        self.unmerge()
        for name, module in list(self.backbone.named_modules()):
            base = getattr(module, "base_layer", None)
            if base is not None and name:
                parent_name, _, child = name.rpartition(".")
                parent = self.backbone.get_submodule(parent_name) if parent_name else self.backbone
                setattr(parent, child, base)
        self.backbone.requires_grad_(False)
