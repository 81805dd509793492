"""Preflight checks of the backbone: it exists on disk (nothing is downloaded) and its positions hold the
sequence length asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pl_petune.config_values import is_whole_number
from pl_petune.errors import ConfigError

# Model types whose learned positions start after the padding index (RobertaEmbeddings.create_position_ids...).
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert",
                            "longformer", "mpnet", "luke", "markuplm"}


def backbone_config(name: str) -> Any:
    """The Hugging Face config of backbone ``name``, read from disk only (an alias, a folder, or the hub cache).

    Raises:
        ConfigError: ``name`` is no alias, no model folder, and not in the local Hugging Face cache.
    """
    from pl_petune.backbones import ALIASES, resolve_backbone

    path = resolve_backbone(name)
    known = ", ".join(sorted(ALIASES))
    folder = Path(os.path.expanduser(path))
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ConfigError(f"backbone folder {name!r} has no config.json; pass a Hugging Face model folder "
                          f"(config.json + weights) or an alias: {known}")
    if not folder.is_dir() and (folder.exists() or path.startswith(("/", "~", "."))):
        raise ConfigError(f"backbone {name!r} is not a model folder; pass a Hugging Face model folder or an alias: "
                          f"{known}")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        if folder.is_dir():
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise ConfigError(f"backbone folder {name!r} does not hold a readable model config ({reason})") from None
        raise ConfigError(f"unknown backbone {name!r}: not an alias ({known}), not a model folder, and not in the "
                          "local Hugging Face cache (nothing is downloaded); pass a model folder or a cached hub id"
                          ) from None


def position_limit(config: Any) -> Optional[int]:
    """How many token positions the backbone's embeddings hold (None: relative positions, no fixed table)."""
    n = getattr(config, "max_position_embeddings", None)
    if not is_whole_number(n):
        return None
    if getattr(config, "model_type", "") in PADDING_OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", 1) or 0) + 1  # type: ignore[operator]
    return n


__all__ = ["backbone_config", "position_limit", "PADDING_OFFSET_POSITIONS"]
