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

Every tuner that applies to sequence classification on an encoder has a preset, a registered subclass that
names its config (:mod:`pl_petune.methods.peft_presets`), so its runs carry its own name (``dora``, ``vera``,
...) and never mix in a report. The generic :class:`Peft` (``peft``) takes any other PEFT config (a tuner newer
than the catalogue) and refuses one that has a preset, naming the preset to use. The configs themselves are
checked and kept as plain data by :mod:`pl_petune.methods.peft_config`.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Optional, Union, cast

import torch

from pl_petune.errors import ConfigError
from pl_petune.methods.peft_config import (
    ADAPTER,
    ADDED,
    TUNERS,
    NeedsWeights,
    Tuner,
    build_config,
    peft_spec,
    preset_of,
)
from pl_petune.methods.pet import PetLayerMethod
from pl_petune.methods.registry import register_method

try:  # the type jsonargparse needs to offer ``class_path: peft.<X>Config``
    from peft import PeftConfig
except ImportError:  # pragma: no cover - peft is a dependency
    PeftConfig = Any  # type: ignore[misc,assignment]

__all__ = ["ADAPTER", "ADDED", "TUNERS", "NeedsWeights", "Peft", "Tuner", "build_config", "peft_spec"]


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A preset (a subclass that declares ``tuner``) gets its own ``params_example`` (none: the generic one
        names another tuner) and the Args section of its docstring, which ``--help`` shows."""
        super().__init_subclass__(**kwargs)
        if "params_example" not in vars(cls):
            cls.params_example = {}
        tuner = vars(cls).get("tuner")
        if isinstance(tuner, Tuner):
            fixed = ", ".join(f"{k}={v[0]!r}" for k, v in tuner.fixed.items() if len(v) == 1)
            cls.__doc__ = (f"{(cls.__doc__ or '').rstrip()}\n\n    A preset of :class:`Peft` with "
                           f"``peft.{tuner.config}``{f' ({fixed})' if fixed else ''}.\n\n    Args:\n"
                           "        peft: the arguments of "
                           f"``peft.{tuner.config}`` (a dict), e.g. ``{{r: 8, target_modules: [query, value]}}``."
                           "\n"
                           "        **kwargs: the base module's arguments.\n")

    def __init__(self, peft: Optional[Union[dict[str, Any], PeftConfig]] = None, **kwargs: Any) -> None:
        # Plain data (weights_only checkpoints); set before the base class builds the backbone and the tuner.
        object.__setattr__(self, "_peft", peft_spec(peft, preset_of(type(self))))
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
        tuner = preset_of(type(self))
        if getattr(config, "target_modules", "unset") is None and tuner is not None and mtype in tuner.targets:
            preset_targets = tuner.targets[mtype]
            config.target_modules = preset_targets if isinstance(preset_targets, str) else set(preset_targets)
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
        reads the pooler, so they would get no gradient); with ``train_pooler`` the pretrained pooler trains."""
        names = {n for n, p in self.named_parameters()
                 if n.startswith("head.") or (p.requires_grad and ".pooler." not in n)}
        if self.hparams.get("train_pooler"):  # under PEFT the pooler is backbone.base_model.model.pooler.*
            names |= {n for n, _ in self.named_parameters() if ".pooler." in n and not self._is_added(n)}
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
        encoder, last kept token of a decoder, the pooler's output for ``head: pooler_linear``); virtual prompt
        tokens are skipped."""
        from pl_petune.decoders import decoder_inputs

        model = self.backbone
        kwargs: dict[str, Any] = {}
        if token_type_ids is not None and getattr(model.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        if not self._prompt_learning:
            kwargs.update(decoder_inputs(model.config, attention_mask))
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            return self._pool(hidden, attention_mask)
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
            return self._pool(out.last_hidden_state, attention_mask)
        embeds = model.word_embeddings(input_ids)
        prompts = model.get_prompt(batch_size=batch).to(embeds.dtype)
        out = base(inputs_embeds=torch.cat([prompts, embeds], 1), attention_mask=torch.cat([ones, attention_mask], 1),
                   **kwargs)
        return self._pool(out.last_hidden_state[:, prompts.shape[1]:], attention_mask)

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from pl_petune.decoders import pool_features

        if self.hparams.get("head") == "pooler_linear":  # as the base module: the (pretrained) pooler's output
            return self.backbone.get_base_model().pooler(hidden)
        return pool_features(self.backbone.config, hidden, attention_mask)

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
