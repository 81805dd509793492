"""The catalogue: every PEFT tuner that applies to sequence classification, as a registered preset of the bridge.

Each preset is one class: its registration (the method's name in recipes, records and ``petune params``), a
docstring (the paper and what trains) and its :class:`~pl_petune.methods.peft_config.Tuner` (the PEFT config
class and the fields that make it this tuner). Nothing else lists the presets: :data:`TUNERS`, the benchmarks,
``petune params --all`` and the test matrix's completeness check read the registry. Adding one (a PEFT tuner
newer than this table): a class here, a row in ``tests/methods/test_matrix.py``, a recipe
``recipes/peft/<name>.yaml`` (docs/methods.md, "Adding a PEFT preset").

Tuners that do not apply are in :data:`NOT_APPLICABLE`, each with the reason.
"""

from __future__ import annotations

from pl_petune.methods.peft_bridge import Peft
from pl_petune.methods.peft_config import ADDED, TUNERS, Tuner
from pl_petune.methods.registry import register_method

# PEFT tuners that do not apply to sequence classification on an encoder, and why (probed with peft 0.21.2).
NOT_APPLICABLE = {
    "ADAPTION_PROMPT": "LLaMA-Adapter's gated prompts are patched into Llama-family attention only",
    "MULTITASK_PROMPT_TUNING": "needs task_ids per example (multi-task prompt sharing); one task per run here",
    "POLY": "needs task_ids per example (multi-task routing over a LoRA inventory)",
    "XLORA": "a mixture of already trained LoRA experts; needs those adapters and a causal LM with use_cache=False",
    "CPT": "context-aware prompt tuning of causal LMs over in-context examples (token-type masks per example)",
    "CARTRIDGE": "a trained KV-cache prefix for causal-LM generation; no prompt-learning path for encoders",
    # Probed: ShadowConfig(target_modules=r".*encoder\.layer\.\d+$") builds and trains on BERT.
    "SHADOW": "builds on BERT only with target_modules set to the encoder blocks, and then most of what PEFT marks "
              "trainable gets no gradient in a classifier: the shadow backbone's own word embeddings (vocabulary x "
              "shadow width, 98 % of the added parameters on a 32-wide BERT) and the last block's shadow update, "
              "which feeds only a language-model head; its trainable count would be mostly dead parameters",
}

_ENCODER_LN = {"bert": ["LayerNorm"], "roberta": ["LayerNorm"]}
_ENCODER_LINEAR = {"bert": ["query", "key", "value", "dense"], "roberta": ["query", "key", "value", "dense"]}
_NO_VARIANT = {"use_dora": (False,), "use_rslora": (False,)}


@register_method("peft_lora", added=ADDED)
class PeftLoRA(Peft):
    """LoRA (Hu et al., 2022) through the bridge: W x + (α/r)·B A x; any PEFT LoRA argument."""
    tuner = Tuner("LoraConfig", fixed={**_NO_VARIANT, "init_lora_weights": (True, "gaussian", False)})


@register_method("dora", added=ADDED)
class DoRA(Peft):
    """DoRA (Liu et al., 2024): LoRA on the direction, a trained magnitude vector per output."""
    tuner = Tuner("LoraConfig", fixed={"use_dora": (True,), "use_rslora": (False,)})


@register_method("rslora", added=ADDED)
class RsLoRA(Peft):
    """rsLoRA (Kalajdzievski, 2023): LoRA scaled by α/√r instead of α/r."""
    tuner = Tuner("LoraConfig", fixed={"use_rslora": (True,), "use_dora": (False,)})


@register_method("pissa", added=ADDED)
class PiSSA(Peft):
    """PiSSA (Meng et al., 2024): LoRA initialised from the top singular vectors of W (W keeps the rest)."""
    tuner = Tuner("LoraConfig", fixed={**_NO_VARIANT, "init_lora_weights": ("pissa",)})


@register_method("olora", added=ADDED)
class OLoRA(Peft):
    """OLoRA (Büyükakyüz, 2024): LoRA initialised from a QR decomposition of W (W keeps the rest)."""
    tuner = Tuner("LoraConfig", fixed={**_NO_VARIANT, "init_lora_weights": ("olora",)})


@register_method("adalora", added=ADDED)
class AdaLoRA(Peft):
    """AdaLoRA (Zhang et al., 2023): SVD-form LoRA whose ranks are pruned by importance during training; set
    total_step (the run's optimizer steps)."""
    params_example = {"peft": {"total_step": 1000}}
    tuner = Tuner("AdaLoraConfig")


@register_method("vera", added=ADDED)
class VeRA(Peft):
    """VeRA (Kopiczko et al., 2024): frozen shared random A, B; trained scaling vectors d, b."""
    tuner = Tuner("VeraConfig")


@register_method("loha", added=ADDED)
class LoHa(Peft):
    """LoHa (Hyeon-Woo et al., 2022): low-rank Hadamard product update."""
    tuner = Tuner("LoHaConfig")


@register_method("lokr", added=ADDED)
class LoKr(Peft):
    """LoKr (Yeh et al., 2024): low-rank Kronecker product update."""
    tuner = Tuner("LoKrConfig")


@register_method("oft", added=ADDED)
class OFT(Peft):
    """OFT (Qiu et al., 2023): a trained block-diagonal orthogonal rotation of W."""
    tuner = Tuner("OFTConfig")


@register_method("boft", added=ADDED)
class BOFT(Peft):
    """BOFT (Liu et al., 2024): orthogonal update as a butterfly product of sparse rotations."""
    tuner = Tuner("BOFTConfig", defaults={"boft_block_size": 4})


@register_method("fourierft", added=ADDED)
class FourierFT(Peft):
    """FourierFT (Gao et al., 2024): n trained spectral coefficients per layer, inverse DFT to ΔW."""
    tuner = Tuner("FourierFTConfig")


@register_method("peft_ia3", added=ADDED)
class PeftIA3(Peft):
    """(IA)³ (Liu et al., 2022) through PEFT: learned vectors rescale keys, values and FFN activations."""
    tuner = Tuner("IA3Config")


@register_method("ln_tuning", added=ADDED)
class LNTuning(Peft):
    """LN tuning (Zhao et al., 2024): trained copies of the LayerNorms (PEFT LNTuningConfig)."""
    tuner = Tuner("LNTuningConfig", targets=_ENCODER_LN)


@register_method("peft_prompt", added=ADDED)
class PeftPromptTuning(Peft):
    """Prompt tuning (Lester et al., 2021) through PEFT: virtual input tokens before the sequence."""
    tuner = Tuner("PromptTuningConfig", defaults={"num_virtual_tokens": 20})


@register_method("p_tuning", added=ADDED)
class PTuning(Peft):
    """P-tuning (Liu et al., 2021): virtual tokens produced by a trained MLP/LSTM prompt encoder."""
    tuner = Tuner("PromptEncoderConfig", defaults={"num_virtual_tokens": 20})


@register_method("peft_prefix", added=ADDED)
class PeftPrefixTuning(Peft):
    """Prefix tuning (Li & Liang, 2021) through PEFT: trained keys and values in every layer (no prefix
    dropout; the built-in 'prefix' is AdapterHub's, with the PETuning dropout)."""
    tuner = Tuner("PrefixTuningConfig", defaults={"num_virtual_tokens": 20})


@register_method("hra", added=ADDED)
class HRA(Peft):
    """HRA (Yuan et al., 2024): a chain of trained Householder reflections of W."""
    tuner = Tuner("HRAConfig")


@register_method("c3a", added=ADDED)
class C3A(Peft):
    """C3A (Chen et al., 2025): ΔW as trained block-circular convolution kernels."""
    tuner = Tuner("C3AConfig", defaults={"block_size": 16})


@register_method("vblora", added=ADDED)
class VBLoRA(Peft):
    """VB-LoRA (Li et al., 2024): LoRA factors composed top-k from a shared trained vector bank."""
    tuner = Tuner("VBLoRAConfig", defaults={"vector_length": 16, "num_vectors": 64})


@register_method("randlora", added=ADDED)
class RandLoRA(Peft):
    """RandLoRA (Albert et al., 2025): full-rank update from frozen random bases with trained scalings."""
    tuner = Tuner("RandLoraConfig")


@register_method("delora", added=ADDED)
class DeLoRA(Peft):
    """DeLoRA (Bini et al., 2025): LoRA with normalised factors and a trained, bounded strength."""
    tuner = Tuner("DeloraConfig")


@register_method("gralora", added=ADDED)
class GraLoRA(Peft):
    """GraLoRA (2025): LoRA split into k×k granular sub-blocks."""
    tuner = Tuner("GraloraConfig")


@register_method("hira", added=ADDED)
class HiRA(Peft):
    """HiRA (2025): Hadamard product of W with a trained low-rank update."""
    tuner = Tuner("HiraConfig")


@register_method("lily", added=ADDED)
class Lily(Peft):
    """Lily (2024): low-rank adapters with shared cross-layer experts."""
    tuner = Tuner("LilyConfig")


@register_method("beft", added=ADDED)
class BEFT(Peft):
    """BEFT (2025): trained biases on the targeted projections."""
    tuner = Tuner("BeftConfig")


@register_method("deft", added=ADDED)
class DEFT(Peft):
    """DEFT (2025): a trained low-rank projection update of W."""
    tuner = Tuner("DeftConfig")


@register_method("glora", added=ADDED)
class GLoRA(Peft):
    """GLoRA (Chavan et al., 2023): generalised LoRA (scale, shift, low-rank terms)."""
    tuner = Tuner("GloraConfig")


@register_method("peanut", added=ADDED)
class PEANuT(Peft):
    """PEANuT (2025): a small trained network of W's activations."""
    tuner = Tuner("PeanutConfig")


@register_method("pvera", added=ADDED)
class PVeRA(Peft):
    """PVeRA (2025): probabilistic VeRA (trained scaling vectors)."""
    tuner = Tuner("PveraConfig")


@register_method("supertuning", added=ADDED)
class SuperTuning(Peft):
    """SuperTuning (2025): trained sparse entries of W."""
    tuner = Tuner("SupertuningConfig")


@register_method("tinylora", added=ADDED)
class TinyLoRA(Peft):
    """TinyLoRA (2025): LoRA through a fixed random projection of a tiny trained vector."""
    tuner = Tuner("TinyLoraConfig")


@register_method("unilora", added=ADDED)
class UniLoRA(Peft):
    """Uni-LoRA (2025): every LoRA entry from one shared trained vector."""
    tuner = Tuner("UniLoraConfig")


@register_method("adamss", added=ADDED)
class AdaMSS(Peft):
    """AdaMSS (2025): adaptive multi-subspace low-rank update."""
    tuner = Tuner("AdamssConfig")


@register_method("osf", added=ADDED)
class OSF(Peft):
    """OSF (2025): orthogonal subspace finetuning of the low singular directions of W."""
    tuner = Tuner("OSFConfig", targets=_ENCODER_LINEAR)


@register_method("frod", added=ADDED)
class FRoD(Peft):
    """FRoD (2025): a shared hierarchical decomposition with trained per-layer scales."""
    tuner = Tuner("FrodConfig")


@register_method("psoft", added=ADDED)
class PSOFT(Peft):
    """PSOFT (2025): orthogonal finetuning in the principal subspace."""
    tuner = Tuner("PsoftConfig")


@register_method("miss", added=ADDED)
class MiSS(Peft):
    """MiSS (2025): a trained shard shared across W's rows."""
    tuner = Tuner("MissConfig")


@register_method("shira", added=ADDED)
class SHiRA(Peft):
    """SHiRA (Bhardwaj et al., 2024): trained sparse high-rank mask of W."""
    tuner = Tuner("ShiraConfig")


@register_method("road", added=ADDED)
class RoAd(Peft):
    """RoAd (Liao et al., 2025): trained 2×2 rotations of W's outputs."""
    tuner = Tuner("RoadConfig")


@register_method("waveft", added=ADDED)
class WaveFT(Peft):
    """WaveFT (2025): trained sparse wavelet coefficients to ΔW."""
    tuner = Tuner("WaveFTConfig")


__all__ = ["NOT_APPLICABLE", "TUNERS", *(t.class_name for t in TUNERS.values())]
