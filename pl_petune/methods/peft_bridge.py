"""Any Hugging Face PEFT tuner as a method: one bridge, and a named preset per tuner.

:class:`Peft` wraps the backbone with ``peft.get_peft_model`` (task type ``FEATURE_EXTRACTION``: the backbone
stays an ``AutoModel`` and our head reads its features), trains exactly the parameters PEFT adds (plus the head),
and keeps the contract of the PET-layer methods (:meth:`~pl_petune.methods.PetLayerMethod.drop_pet_layers` for
EH-FT's head warm start). A recipe names the tuner by its PEFT config:

.. code-block:: yaml

    model:
      class_path: pl_petune.methods.VeRA          # a preset: the tuner is in the class, runs are recorded as "vera"
      init_args:
        peft: {r: 256, target_modules: [query, value]}      # the arguments of peft.VeraConfig

``peft`` is PEFT's own config, either as a dict of its arguments (PEFT's ``adapter_config.json`` form; a
``peft_type`` key is optional for a preset) or as ``{class_path: peft.VeraConfig, init_args: {...}}``.
Unset ``target_modules`` take PEFT's default for the backbone's model type (BERT/RoBERTa: query, value; Llama,
Qwen2, Mistral: q_proj, v_proj; GPT-2: c_attn).

Every tuner that applies to sequence classification on an encoder has a preset (:data:`TUNERS`); each is a
registered method, so its runs carry its own name (``dora``, ``vera``, ...) and never mix in a report. The
generic :class:`Peft` (``peft``) takes any other PEFT config (a tuner newer than this table) and refuses one
that has a preset, naming the preset to use. Tuners that do not apply are listed in :data:`NOT_APPLICABLE`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union, cast

import torch

from pl_petune.errors import ConfigError
from pl_petune.methods.pet import PetLayerMethod
from pl_petune.methods.registry import register_method

try:  # the type jsonargparse needs to offer ``class_path: peft.<X>Config``
    from peft import PeftConfig
except ImportError:  # pragma: no cover - peft is a dependency
    PeftConfig = Any  # type: ignore[misc,assignment]

ADAPTER = "default"  # PEFT's adapter name: export and PeftModel.from_pretrained load it without a subfolder
# Every parameter PEFT adds lives under its adapter name (lora_A.default.weight, vera_lambda_b.default,
# ln_tuning_layers.default.weight, prompt_encoder.default.embedding.weight, modules_to_save.default.*).
ADDED = r"\." + ADAPTER + r"(?:\.|$)"
# Config fields the bridge owns: the task type (our head reads features), and training mode.
RESERVED = ("task_type", "inference_mode", "base_model_name_or_path", "revision", "peft_version", "auto_mapping")

# PEFT tuners that do not apply to sequence classification on an encoder, and why (probed with peft 0.21.2).
NOT_APPLICABLE = {
    "ADAPTION_PROMPT": "LLaMA-Adapter's gated prompts are patched into Llama-family attention only",
    "MULTITASK_PROMPT_TUNING": "needs task_ids per example (multi-task prompt sharing); one task per run here",
    "POLY": "needs task_ids per example (multi-task routing over a LoRA inventory)",
    "XLORA": "a mixture of already trained LoRA experts; needs those adapters and a causal LM with use_cache=False",
    "CPT": "context-aware prompt tuning of causal LMs over in-context examples (token-type masks per example)",
    "CARTRIDGE": "a trained KV-cache prefix for causal-LM generation; no prompt-learning path for encoders",
    "SHADOW": "fails on BERT in peft 0.21.2 ('ShadowCarrier' object has no attribute 'view')",
}


class NeedsWeights(ConfigError):
    """The tuner's init reads the weights (SVD, permutations), so it cannot be built on the meta device."""


@dataclass(frozen=True)
class Tuner:
    """A preset: a PEFT config class with the fields that make it this tuner.

    Args:
        name: registry name (records, ``petune params --method``).
        class_name: the class, ``pl_petune.methods.<class_name>``.
        config: PEFT config class name (``peft.<config>``).
        fixed: fields that define the tuner, with their allowed values (another value is another tuner).
        defaults: the preset's defaults where PEFT's do not fit (the user may override them).
        targets: ``target_modules`` per model type, used only where PEFT has no default mapping.
        doc: one line: the paper and what trains.
        example: arguments the config requires with no default, for ``petune params --all``.
    """

    name: str
    class_name: str
    config: str
    fixed: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, list[str]] = field(default_factory=dict)
    doc: str = ""
    example: dict[str, Any] = field(default_factory=dict)


_ENCODER_LN = {"bert": ["LayerNorm"], "roberta": ["LayerNorm"]}
_ENCODER_LINEAR = {"bert": ["query", "key", "value", "dense"], "roberta": ["query", "key", "value", "dense"]}
_NO_VARIANT = {"use_dora": (False,), "use_rslora": (False,)}

TUNERS: dict[str, Tuner] = {t.name: t for t in (
    Tuner("peft_lora", "PeftLoRA", "LoraConfig", {**_NO_VARIANT, "init_lora_weights": (True, "gaussian", False)},
          doc="LoRA (Hu et al., 2022) through the bridge: W x + (α/r)·B A x; any PEFT LoRA argument"),
    Tuner("dora", "DoRA", "LoraConfig", {"use_dora": (True,), "use_rslora": (False,)},
          doc="DoRA (Liu et al., 2024): LoRA on the direction, a trained magnitude vector per output"),
    Tuner("rslora", "RsLoRA", "LoraConfig", {"use_rslora": (True,), "use_dora": (False,)},
          doc="rsLoRA (Kalajdzievski, 2023): LoRA scaled by α/√r instead of α/r"),
    Tuner("pissa", "PiSSA", "LoraConfig", {**_NO_VARIANT, "init_lora_weights": ("pissa",)},
          doc="PiSSA (Meng et al., 2024): LoRA initialised from the top singular vectors of W (W keeps the rest)"),
    Tuner("olora", "OLoRA", "LoraConfig", {**_NO_VARIANT, "init_lora_weights": ("olora",)},
          doc="OLoRA (Büyükakyüz, 2024): LoRA initialised from a QR decomposition of W (W keeps the rest)"),
    Tuner("adalora", "AdaLoRA", "AdaLoraConfig", example={"total_step": 1000},
          doc="AdaLoRA (Zhang et al., 2023): SVD-form LoRA whose ranks are pruned by importance during training; "
              "set total_step (the run's optimizer steps)"),
    Tuner("vera", "VeRA", "VeraConfig",
          doc="VeRA (Kopiczko et al., 2024): frozen shared random A, B; trained scaling vectors d, b"),
    Tuner("loha", "LoHa", "LoHaConfig", doc="LoHa (Hyeon-Woo et al., 2022): low-rank Hadamard product update"),
    Tuner("lokr", "LoKr", "LoKrConfig", doc="LoKr (Yeh et al., 2024): low-rank Kronecker product update"),
    Tuner("oft", "OFT", "OFTConfig", doc="OFT (Qiu et al., 2023): a trained block-diagonal orthogonal rotation of W"),
    Tuner("boft", "BOFT", "BOFTConfig", defaults={"boft_block_size": 4},
          doc="BOFT (Liu et al., 2024): orthogonal update as a butterfly product of sparse rotations"),
    Tuner("fourierft", "FourierFT", "FourierFTConfig",
          doc="FourierFT (Gao et al., 2024): n trained spectral coefficients per layer, inverse DFT to ΔW"),
    Tuner("peft_ia3", "PeftIA3", "IA3Config",
          doc="(IA)³ (Liu et al., 2022) through PEFT: learned vectors rescale keys, values and FFN activations"),
    Tuner("ln_tuning", "LNTuning", "LNTuningConfig", targets=_ENCODER_LN,
          doc="LN tuning (Zhao et al., 2024): trained copies of the LayerNorms (PEFT LNTuningConfig)"),
    Tuner("peft_prompt", "PeftPromptTuning", "PromptTuningConfig", defaults={"num_virtual_tokens": 20},
          doc="Prompt tuning (Lester et al., 2021) through PEFT: virtual input tokens before the sequence"),
    Tuner("p_tuning", "PTuning", "PromptEncoderConfig", defaults={"num_virtual_tokens": 20},
          doc="P-tuning (Liu et al., 2021): virtual tokens produced by a trained MLP/LSTM prompt encoder"),
    Tuner("peft_prefix", "PeftPrefixTuning", "PrefixTuningConfig", defaults={"num_virtual_tokens": 20},
          doc="Prefix tuning (Li & Liang, 2021) through PEFT: trained keys and values in every layer (no prefix "
              "dropout; the built-in 'prefix' is AdapterHub's, with the PETuning dropout)"),
    Tuner("hra", "HRA", "HRAConfig", doc="HRA (Yuan et al., 2024): a chain of trained Householder reflections of W"),
    Tuner("c3a", "C3A", "C3AConfig", defaults={"block_size": 16},
          doc="C3A (Chen et al., 2025): ΔW as trained block-circular convolution kernels"),
    Tuner("vblora", "VBLoRA", "VBLoRAConfig", defaults={"vector_length": 16, "num_vectors": 64},
          doc="VB-LoRA (Li et al., 2024): LoRA factors composed top-k from a shared trained vector bank"),
    Tuner("randlora", "RandLoRA", "RandLoraConfig",
          doc="RandLoRA (Albert et al., 2025): full-rank update from frozen random bases with trained scalings"),
    Tuner("delora", "DeLoRA", "DeloraConfig",
          doc="DeLoRA (Bini et al., 2025): LoRA with normalised factors and a trained, bounded strength"),
    Tuner("gralora", "GraLoRA", "GraloraConfig", doc="GraLoRA (2025): LoRA split into k×k granular sub-blocks"),
    Tuner("hira", "HiRA", "HiraConfig", doc="HiRA (2025): Hadamard product of W with a trained low-rank update"),
    Tuner("lily", "Lily", "LilyConfig", doc="Lily (2024): low-rank adapters with shared cross-layer experts"),
    Tuner("beft", "BEFT", "BeftConfig", doc="BEFT (2025): trained biases on the targeted projections"),
    Tuner("deft", "DEFT", "DeftConfig", doc="DEFT (2025): a trained low-rank projection update of W"),
    Tuner("glora", "GLoRA", "GloraConfig", doc="GLoRA (Chavan et al., 2023): generalised LoRA (scale, shift, "
                                                 "low-rank terms)"),
    Tuner("peanut", "PEANuT", "PeanutConfig", doc="PEANuT (2025): a small trained network of W's activations"),
    Tuner("pvera", "PVeRA", "PveraConfig", doc="PVeRA (2025): probabilistic VeRA (trained scaling vectors)"),
    Tuner("supertuning", "SuperTuning", "SupertuningConfig", doc="SuperTuning (2025): trained sparse entries of W"),
    Tuner("tinylora", "TinyLoRA", "TinyLoraConfig", doc="TinyLoRA (2025): LoRA through a fixed random projection "
                                                          "of a tiny trained vector"),
    Tuner("unilora", "UniLoRA", "UniLoraConfig", doc="Uni-LoRA (2025): every LoRA entry from one shared trained "
                                                       "vector"),
    Tuner("adamss", "AdaMSS", "AdamssConfig", doc="AdaMSS (2025): adaptive multi-subspace low-rank update"),
    Tuner("osf", "OSF", "OSFConfig", targets=_ENCODER_LINEAR,
          doc="OSF (2025): orthogonal subspace finetuning of the low singular directions of W"),
    Tuner("frod", "FRoD", "FrodConfig", doc="FRoD (2025): a shared hierarchical decomposition with trained "
                                              "per-layer scales"),
    Tuner("psoft", "PSOFT", "PsoftConfig", doc="PSOFT (2025): orthogonal finetuning in the principal subspace"),
    Tuner("miss", "MiSS", "MissConfig", doc="MiSS (2025): a trained shard shared across W's rows"),
    Tuner("shira", "SHiRA", "ShiraConfig", doc="SHiRA (Bhardwaj et al., 2024): trained sparse high-rank mask of W"),
    Tuner("road", "RoAd", "RoadConfig", doc="RoAd (Liao et al., 2025): trained 2×2 rotations of W's outputs"),
    Tuner("waveft", "WaveFT", "WaveFTConfig", doc="WaveFT (2025): trained sparse wavelet coefficients to ΔW"),
)}


def _config_class(name: str) -> type:
    import peft

    cls = getattr(peft, name, None)
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)):
        raise ConfigError(f"peft.{name} is not a PEFT config class in peft {peft.__version__}")
    return cls


def _config_class_for(peft_type: str) -> type:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    by_name = {str(getattr(k, "value", k)).upper(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    key = str(peft_type).upper()
    if key not in by_name:
        raise ConfigError(f"unknown peft_type {peft_type!r}; known: {', '.join(sorted(by_name))}")
    return by_name[key]


def _plain(value: Any) -> Any:
    """YAML/JSON-able data (sets sorted, dataclasses and namespaces as dicts, enums as values)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and type(value).__module__.startswith("peft"):
        return value.value
    if type(value).__name__ == "Namespace":
        return _plain(vars(value))
    return value


def _field_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def _peft_type(cls: type) -> str:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        if v is cls:
            return str(getattr(k, "value", k))
    raise ConfigError(f"{cls.__name__} is not registered with PEFT (no peft_type)")


def peft_spec(value: Any, tuner: Optional[Tuner] = None) -> dict[str, Any]:
    """The tuner's config as plain data: ``{"peft_type": ..., <arguments that differ from PEFT's defaults>}``.

    Args:
        value: ``None`` (the tuner's defaults), a PEFT config object, a dict of its arguments (with or without
            ``peft_type``), or ``{"class_path": "peft.<X>Config", "init_args": {...}}``.
        tuner: the preset, whose config class and fixed fields ``value`` must agree with; ``None``: the generic
            bridge (the config names its class).

    Raises:
        ConfigError: an unknown config class or argument, a field the bridge sets itself, a value PEFT refuses,
            a preset's defining field changed, or (generic bridge) a config that has a preset.
    """
    if value is None:
        value = {}
    if isinstance(value, dict) and "class_path" in value:
        extra = sorted(set(value) - {"class_path", "init_args"})
        if extra:
            raise ConfigError(f"peft: {extra} beside class_path; put the PEFT arguments under peft.init_args "
                              f"(or give peft as a plain dict of arguments)")
        cls = _config_class(str(value["class_path"]).rpartition(".")[2])
        args = _non_default(cls, _plain(dict(value.get("init_args") or {})))
    elif isinstance(value, dict):
        args = dict(value)
        ptype = args.pop("peft_type", None)
        if ptype is not None:
            cls = _config_class_for(ptype)
        elif tuner is not None:
            cls = _config_class(tuner.config)
        else:
            raise ConfigError("peft: name the tuner, e.g. {peft_type: LORA, r: 8} or {class_path: peft.LoraConfig, "
                              "init_args: {r: 8}}, or use a preset (pl_petune.methods.DoRA, VeRA, ...)")
    elif dataclasses.is_dataclass(value):
        cls = type(value)
        args = _non_default(cls, _plain(value))
    else:
        raise ConfigError(f"peft must be a PEFT config, a dict of its arguments or class_path/init_args; "
                          f"got {type(value).__name__}")
    args.pop("peft_type", None)
    ptype = _peft_type(cls)
    if args.get("inference_mode"):
        raise ConfigError("peft.inference_mode true would freeze the adapter (nothing would train); the bridge sets "
                          "it: leave it out")
    fields = {f.name for f in dataclasses.fields(cls)} - {"peft_type", *RESERVED}
    unknown = sorted(set(args) - fields - set(RESERVED))
    if unknown:
        raise ConfigError(f"peft: unknown argument(s) {unknown} of peft.{cls.__name__}; allowed: "
                          f"{', '.join(sorted(fields))}")
    if args.get("task_type") not in (None, "FEATURE_EXTRACTION"):
        raise ConfigError(f"peft.task_type {args['task_type']!r}: the bridge sets FEATURE_EXTRACTION (pl_petune's "
                          "head reads the backbone's features); leave task_type out")
    args.pop("task_type", None)
    args = {k: v for k, v in args.items() if k not in RESERVED}
    if tuner is not None:
        if cls is not _config_class(tuner.config):
            raise ConfigError(f"method {tuner.name!r} is peft.{tuner.config}; got peft.{cls.__name__} "
                              f"(use pl_petune.methods.Peft for another tuner)")
        field_defaults = _field_defaults(cls)
        defining = {k: v[0] for k, v in tuner.fixed.items() if field_defaults.get(k) not in v}
        args = {**defining, **tuner.defaults, **args}
        for key, allowed in tuner.fixed.items():
            got = args.get(key, _field_defaults(cls).get(key))
            if got not in allowed:
                raise ConfigError(f"method {tuner.name!r}: peft.{key}={got!r} would be another tuner; allowed: "
                                  f"{', '.join(map(repr, allowed))} (see petune params --all)")
    else:
        preset = _preset_for(cls, args)
        if preset is not None:
            raise ConfigError(f"peft.{cls.__name__} with these arguments is method {preset.name!r}: use class_path "
                              f"pl_petune.methods.{preset.class_name}, so its runs are recorded under its own name")
    spec = {"peft_type": ptype, **_plain(args)}
    build_config(spec)  # PEFT's own checks now, before any backbone loads
    return spec


def _non_default(cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments that differ from the config class's defaults (a parsed or built config lists them all)."""
    defaults = _field_defaults(cls)
    out = {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}
    out = {k: v for k, v in out.items() if not (k == "task_type" and v is None)}
    if "loftq_config" in out and out.get("init_lora_weights") != "loftq":
        out.pop("loftq_config")  # jsonargparse fills LoftQConfig's defaults; PEFT ignores it unless loftq
    return out


def _preset_for(cls: type, args: dict[str, Any]) -> Optional[Tuner]:
    defaults = _field_defaults(cls)
    for tuner in TUNERS.values():
        if _config_class(tuner.config) is cls and all(
                args.get(k, defaults.get(k)) in allowed for k, allowed in tuner.fixed.items()):
            return tuner
    return None


def build_config(spec: dict[str, Any]):
    """A fresh PEFT config object from :func:`peft_spec`'s plain data (task type ``FEATURE_EXTRACTION``).

    Raises:
        ConfigError: PEFT refuses a value (its message, one line).
    """
    args = dict(spec)
    cls = _config_class_for(args.pop("peft_type"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(task_type="FEATURE_EXTRACTION", **args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"peft.{cls.__name__}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None


@register_method("peft", added=ADDED)
class Peft(PetLayerMethod):
    """Any PEFT tuner: the backbone wrapped by ``peft.get_peft_model``; PEFT's added parameters and the head train.

    Args:
        peft: the PEFT config: a dict of its arguments with ``peft_type`` (``{peft_type: HRA, r: 8}``, PEFT's
            ``adapter_config.json`` form), ``{class_path: peft.HRAConfig, init_args: {...}}``, or a config object.
            Tuners with a preset (``petune params --all``) are refused here: use the preset's class.
        **kwargs: the base module's arguments (:class:`~pl_petune.methods.base.PetuneModule`).

    Raises:
        ConfigError: a config PEFT or the bridge refuses (one line naming the value), or targets that match no
            layer of the backbone.
    """

    tuner: ClassVar[Optional[Tuner]] = None
    pet_library = "peft"
    # what ``petune params --all`` builds: a tuner without a preset (trainable embeddings of token 0)
    params_example: ClassVar[dict[str, Any]] = {"peft": {"peft_type": "TRAINABLE_TOKENS", "token_indices": [0],
                                                         "target_modules": ["word_embeddings"]}}

    def __init__(self, peft: Optional[Union[PeftConfig, dict[str, Any]]] = None, **kwargs: Any) -> None:
        # Plain data (weights_only checkpoints); set before the base class builds the backbone and the tuner.
        object.__setattr__(self, "_peft", peft_spec(peft, self.tuner))
        if isinstance(peft, dict) or peft is None:
            peft = dict(peft or {})
        else:  # a config object (class_path in a recipe): the saved hyper-parameter is its plain form
            peft = dict(self._peft)  # type: ignore[arg-type]
        super().__init__(**kwargs)

    # ---- building ---------------------------------------------------------------------------------------
    def peft_config(self):
        """The tuner's PEFT config object (a fresh copy of what the backbone was wrapped with)."""
        return build_config(self._peft)

    def configure_method(self) -> None:
        from peft import get_peft_model

        config = self.peft_config()
        mtype = getattr(self.backbone.config, "model_type", "")
        if (getattr(config, "target_modules", "unset") is None and self.tuner is not None
                and mtype in self.tuner.targets):
            config.target_modules = set(self.tuner.targets[mtype])
        if getattr(config, "exclude_modules", "unset") is None and hasattr(self.backbone, "pooler"):
            config.exclude_modules = ["pooler.dense"]  # the head never reads the pooler: no dead adapter on it
        before = _fingerprints(self.backbone)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.backbone = get_peft_model(self.backbone, config, adapter_name=ADAPTER)
        except (ValueError, KeyError, TypeError, NotImplementedError, AttributeError, RuntimeError) as err:
            if any(p.device.type == "meta" for p in self.backbone.parameters()):
                raise NeedsWeights(f"method {self.method_name!r} cannot be built on the meta device (its init "
                                   f"computes with the weights; petune params --method {self.method_name} builds it "
                                   f"with real weights): {str(err).splitlines()[0][:120]}") from None
            targets = getattr(config, "target_modules", None)
            where = f" with target_modules {sorted(targets) if isinstance(targets, set) else targets!r}" \
                if targets is not None else ""
            raise ConfigError(f"method {self.method_name!r} (peft.{type(config).__name__}){where} on backbone "
                              f"{self.hparams.backbone!r} ({mtype}): {str(err).splitlines()[0]}") from None  # type: ignore[attr-defined]
        # Some inits (PiSSA, OLoRA, ...) rewrite or replace pretrained tensors: unloading would not give them back.
        after = _fingerprints(self.backbone)
        self._rewrote_pretrained = any(after.get(i) != v for i, v in before.items())

    def select_trainable(self) -> set[str]:
        """The head and what PEFT made trainable; adapters PEFT put on the pooler stay frozen (the head never
        reads the pooler, so they would get no gradient)."""
        names = {n for n, p in self.named_parameters()
                 if n.startswith("head.") or (p.requires_grad and ".pooler." not in n)}
        if not any(n.startswith("backbone.") for n in names):
            raise ConfigError(f"method {self.method_name!r}: PEFT left no backbone parameter trainable")
        return names

    @property
    def _prompt_learning(self) -> bool:
        return bool(getattr(self.backbone, "peft_config", None)) and self.backbone.active_peft_config.is_prompt_learning

    # ---- forward --------------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The backbone's features with the tuner active, pooled as for the plain backbone (first token of an
        encoder, last kept token of a decoder); virtual prompt tokens are skipped."""
        from pl_petune.decoders import decoder_inputs, pool_features

        model = self.backbone
        kwargs: dict[str, Any] = {}
        if token_type_ids is not None and getattr(model.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        if not self._prompt_learning:
            kwargs.update(decoder_inputs(model.config, attention_mask))
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            return pool_features(model.config, hidden, attention_mask)
        # PEFT's prompt-learning forward drops token_type_ids (segment B of a pair would silently read as A):
        # the same prompt path here, keeping them, the virtual tokens in segment 0.
        config = model.active_peft_config
        batch, n = input_ids.shape[0], config.num_virtual_tokens
        ones = attention_mask.new_ones(batch, n)
        if "token_type_ids" in kwargs:
            kwargs["token_type_ids"] = (torch.cat([torch.zeros_like(ones), cast(torch.Tensor, token_type_ids)], 1)
                                        if config.peft_type.value != "PREFIX_TUNING" else token_type_ids)
        base = model.get_base_model()
        if config.peft_type.value == "PREFIX_TUNING":
            out = base(input_ids=input_ids, attention_mask=torch.cat([ones, attention_mask], 1),
                       past_key_values=model.get_prompt(batch_size=batch), **kwargs)
            return pool_features(model.config, out.last_hidden_state, attention_mask)
        embeds = model.word_embeddings(input_ids)
        prompts = model.get_prompt(batch_size=batch).to(embeds.dtype)
        out = base(inputs_embeds=torch.cat([prompts, embeds], 1), attention_mask=torch.cat([ones, attention_mask], 1),
                   **kwargs)
        return pool_features(model.config, out.last_hidden_state[:, prompts.shape[1]:], attention_mask)

    # ---- AdaLoRA: orthogonality penalty and rank allocation (what PEFT's Trainer integration does) ----------
    def _adalora(self):
        cfg = getattr(self.backbone, "peft_config", {}).get(ADAPTER)
        return cfg if cfg is not None and cfg.peft_type.value == "ADALORA" else None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = super().loss(logits, labels)
        cfg = self._adalora()
        if cfg is None or not self.training or cfg.orth_reg_weight == 0:
            return loss
        # AdaLoRA's regulariser R = mean over A, B of ||P Pᵀ − I||_F (A rows, B columns orthonormal)
        terms = []
        for n, p in self.backbone.named_parameters():
            if p.requires_grad and f".{ADAPTER}" in n and (".lora_A." in n or ".lora_B." in n):
                cov = p @ p.T if ".lora_A." in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device,
                                                                      dtype=cov.dtype)))
        return loss + cfg.orth_reg_weight * torch.stack(terms).mean() if terms else loss

    def on_fit_start(self) -> None:
        """AdaLoRA's budget schedule ends at ``total_step``: refuse one the run cannot reach."""
        cfg = self._adalora()
        if cfg is not None:
            steps = int(self.trainer.estimated_stepping_batches)
            if cfg.total_step > steps:
                raise ConfigError(f"adalora peft.total_step {cfg.total_step} exceeds this run's {steps} optimizer "
                                  f"steps: its rank budget would never reach target_r; set total_step: {steps}")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """AdaLoRA re-allocates ranks right after each optimizer step, from that step's gradients, inside the
        step: a checkpoint saved at the step's end (callbacks run before module hooks) already holds it."""
        super().optimizer_step(*args, **kwargs)
        if self._adalora() is not None:
            self.backbone.base_model.update_and_allocate(self.trainer.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also AdaLoRA's importance estimates and its fixed rank pattern: a resumed run allocates as the
        uninterrupted one would."""
        super().on_save_checkpoint(checkpoint)
        cfg = self._adalora()
        if cfg is not None:
            alloc = self.backbone.base_model.rankallocator
            checkpoint["petune_adalora"] = {"ipt": alloc.ipt, "exp_avg_ipt": alloc.exp_avg_ipt,
                                            "exp_avg_unc": alloc.exp_avg_unc, "rank_pattern": cfg.rank_pattern}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state, cfg = checkpoint.get("petune_adalora"), self._adalora()
        if state is not None and cfg is not None:
            alloc = self.backbone.base_model.rankallocator
            device = next(self.parameters()).device
            for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
                setattr(alloc, key, {n: t.to(device) for n, t in state[key].items()})
            cfg.rank_pattern = state["rank_pattern"]

    # ---- the PET contract -------------------------------------------------------------------------------
    def drop_pet_layers(self) -> None:
        """Remove the tuner: ``self.backbone`` becomes the plain pretrained model (PEFT's ``unload()``, no merge;
        for prompt learning, the base model), frozen; the head is kept.

        Raises:
            ConfigError: the tuner rewrote or replaced pretrained tensors at init (PiSSA, OLoRA, ...): unloading
                would leave the residual weights, not the pretrained ones.
        """
        if self._rewrote_pretrained:
            raise ConfigError(f"method {self.method_name!r} rewrites the pretrained weights at init; its layers "
                              "cannot be dropped for a head warm start, which needs them as loaded (use e.g. "
                              "peft_lora, dora, rslora)")
        model = self.backbone
        plain = model.get_base_model() if self._prompt_learning else model.unload()
        plain.requires_grad_(False)
        self.backbone = plain

    def export(self, out_dir: str) -> None:
        """Write the adapter in PEFT's own format (``save_pretrained``: ``adapter_config.json`` and
        ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained(AutoModel..., out_dir)``."""
        self.backbone.save_pretrained(out_dir, selected_adapters=[ADAPTER])

    def record_extra(self) -> dict[str, Any]:
        return {"pet_library": "peft", "peft_config": dict(self._peft)}  # type: ignore[arg-type]


def _fingerprints(module: torch.nn.Module) -> dict[int, tuple[float, float]]:
    """Per parameter tensor (by identity): its sum and norm in float64 (PEFT rewrites some through ``.data``,
    which no version counter sees); empty on the meta device, where nothing is read."""
    out = {}
    with torch.no_grad():
        for p in module.parameters():
            if p.device.type == "meta":
                return {}
            out[id(p)] = (float(p.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(p, dtype=torch.float64)))
    return out


def _make_preset(tuner: Tuner) -> type:
    doc = (f"{tuner.doc}.\n\n    A preset of :class:`Peft` with ``peft.{tuner.config}``"
           + (f" ({', '.join(f'{k}={v[0]!r}' for k, v in tuner.fixed.items() if len(v) == 1)})" if tuner.fixed
              else "") + ".\n\n    Args:\n        peft: the arguments of ``peft." + tuner.config + "`` (a dict), "
           "e.g. ``{r: 8, target_modules: [query, value]}``.\n        **kwargs: the base module's arguments.\n")
    cls = type(tuner.class_name, (Peft,), {"__doc__": doc, "tuner": tuner, "__module__": __name__,
                                           "__qualname__": tuner.class_name,
                                           "params_example": {"peft": tuner.example} if tuner.example else {}})
    return register_method(tuner.name, added=ADDED)(cls)


PRESETS: dict[str, type] = {name: _make_preset(t) for name, t in TUNERS.items()}
globals().update({cls.__name__: cls for cls in PRESETS.values()})
