"""Checks of a parsed ``petune fit|validate|test`` config before anything is built or written.

Lightning, torch and Hugging Face check many values only when they use them: after the store row, the run
folder and minutes of tokenizing, with a traceback (a seed numpy cannot take, a ``max_length`` beyond the
backbone's position table, an accelerator the machine lacks), or never, training on in silence (a negative
patience, a negative gradient clip that flips every gradient), or they stop without a best checkpoint
(``max_epochs 0``, ``limit_train_batches 0``, ``save_top_k 0``). :func:`check_config` refuses each of them with
one line naming the key, the value and what is allowed. The trainer's checks are :mod:`pl_petune.trainer_checks`,
the backbone's :mod:`pl_petune.backbone_checks`, the recipe files' (UTF-8, no key given twice)
:mod:`pl_petune.recipe_files`; their names are re-exported here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pl_petune.backbone_checks import backbone_config, position_limit
from pl_petune.config_values import config_value, is_whole_number
from pl_petune.errors import ConfigError
from pl_petune.recipe_files import check_recipe_files, recipe_paths, strict_yaml
from pl_petune.trainer_checks import check_accelerator, check_devices, check_precision, check_trainer

SEED_MAX = 2**32 - 1  # numpy's SeedSequence / RandomState range, which seed_everything and the samplers use


def check_seed(key: str, value: Any) -> None:
    """Seeds must be whole numbers numpy accepts."""
    if value is None:
        return
    if not is_whole_number(value) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key} {value!r} is outside the seed range; use a whole number from 0 to {SEED_MAX}")


def check_output_path(key: str, path: Any, kind: str) -> None:
    """``path`` (a folder, or a ``file`` such as the store) can be created: no part of it is a file in the way.

    Args:
        key: the config key, for the message.
        path: the value.
        kind: ``folder`` or ``file``.
    """
    if path is None or "://" in str(path):
        return
    p = Path(os.path.expanduser(str(path)))
    if str(path).strip() == "":
        raise ConfigError(f"{key} is empty; pass a {kind} path")
    if p.exists():
        if kind == "folder" and not p.is_dir():
            raise ConfigError(f"{key} {str(path)!r} is a file, not a folder; pass a folder (it is created if missing)")
        if kind == "file" and p.is_dir():
            raise ConfigError(f"{key} {str(path)!r} is a folder, not a file; pass a file path such as "
                              f"{os.path.join(str(path), 'results.sqlite')}")
        if not os.access(p if p.is_dir() else p.parent, os.W_OK):
            raise ConfigError(f"{key} {str(path)!r} is not writable; pass a {kind} you can write to")
        return
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{key} {str(path)!r} cannot be created: {str(parent)!r} is not writable")
            return


def check_model_data(model_args: Any, data: Any, check_backbone: bool = True) -> None:
    """Seeds of model and data; the backbone exists offline and its positions hold ``data.max_length``."""
    check_seed("model.init_args.init_seed", config_value(model_args, "init_seed"))
    check_seed("data.data_seed", config_value(data, "data_seed"))
    workers = config_value(data, "num_workers")
    if workers is not None and (not is_whole_number(workers) or workers < 0):
        raise ConfigError(f"data.num_workers {workers!r} must be 0 (load in the main process) or more")
    backbone = config_value(model_args, "backbone")
    if not check_backbone or not isinstance(backbone, str):
        return
    config = backbone_config(backbone)
    limit = position_limit(config)
    max_length = config_value(data, "max_length")
    extra = config_value(model_args, "prompt_length", 0) or 0  # prompt tuning puts its soft tokens in the sequence
    if limit is not None and is_whole_number(max_length) and max_length + extra > limit:
        used = f"data.max_length {max_length}" + (f" + {extra} prompt tokens" if extra else "")
        raise ConfigError(f"{used} is beyond the {limit} positions of backbone {backbone!r}; use data.max_length <= "
                          f"{limit - extra}")


def check_callbacks(cfg: Any) -> None:
    """The checkpoint and early-stopping values petune's selection relies on."""
    top_k = config_value(cfg, "checkpoint.save_top_k")
    if top_k is not None and (not is_whole_number(top_k) or top_k == 0 or top_k < -1):
        raise ConfigError(f"checkpoint.save_top_k {top_k!r} keeps no best checkpoint to test; use 1 (the best), "
                          "k >= 1, or -1 (all)")
    every = config_value(cfg, "checkpoint.every_n_epochs")
    if every is not None and (not is_whole_number(every) or every < 1):
        raise ConfigError(f"checkpoint.every_n_epochs {every!r} never saves a checkpoint; use a whole number >= 1")
    patience = config_value(cfg, "early_stopping.patience")
    if patience is not None and (not is_whole_number(patience) or patience < 0):
        raise ConfigError(f"early_stopping.patience {patience!r} must be a whole number of validations >= 0")
    delta = config_value(cfg, "early_stopping.min_delta")
    if delta is not None and (not isinstance(delta, (int, float)) or delta < 0 or math.isnan(delta)):
        raise ConfigError(f"early_stopping.min_delta {delta!r} must be >= 0 (the improvement that counts)")


def check_ckpt_path(ckpt_path: Any) -> None:
    """An explicit ``--ckpt_path`` must be an intact checkpoint file (or one of Lightning's names)."""
    if ckpt_path is None:
        return
    from pl_petune.checkpoint_io import LIGHTNING_CKPT_NAMES, CorruptCheckpointError, verify_checkpoint

    if ckpt_path in LIGHTNING_CKPT_NAMES or "://" in str(ckpt_path):
        return
    p = Path(os.path.expanduser(str(ckpt_path)))
    if not p.exists():
        raise ConfigError(f"ckpt_path {str(ckpt_path)!r} does not exist; pass a .ckpt file petune fit saved, or "
                          f"one of {', '.join(LIGHTNING_CKPT_NAMES)}")
    if p.is_dir():
        raise ConfigError(f"ckpt_path {str(ckpt_path)!r} is a folder; pass a .ckpt file inside it")
    try:
        verify_checkpoint(p)
    except CorruptCheckpointError as err:
        raise ConfigError(f"ckpt_path: {err}; pass a .ckpt file petune fit saved") from None


def check_config(cfg: Any, subcommand: str, check_backbone: bool = True) -> None:
    """Refuse every value of a parsed ``subcommand`` config that would fail late or silently.

    Args:
        cfg: the subcommand's namespace (``cli.config[subcommand]``), before classes are instantiated.
        subcommand: ``fit``, ``validate`` or ``test``.
        check_backbone: read the backbone's config from disk to check it exists and holds ``max_length``.

    Raises:
        ConfigError: the first bad value, in one line naming key, value and what is allowed.
    """
    fitting = subcommand == "fit"
    check_seed("run.seed", config_value(cfg, "run.seed"))
    check_output_path("run.out_dir", config_value(cfg, "run.out_dir"), "folder")
    if fitting:
        from pl_petune.store import default_store_path

        check_output_path("run.store", config_value(cfg, "run.store") or default_store_path(), "file")
    else:
        check_output_path("trainer.default_root_dir", config_value(cfg, "trainer.default_root_dir"), "folder")
    check_trainer(config_value(cfg, "trainer"), fitting)
    if fitting:
        check_callbacks(cfg)
    check_ckpt_path(config_value(cfg, "ckpt_path"))
    check_model_data(config_value(cfg, "model.init_args"), config_value(cfg, "data"), check_backbone)


__all__ = ["check_config", "check_recipe_files", "strict_yaml", "recipe_paths", "backbone_config", "position_limit",
           "check_output_path", "check_trainer", "check_devices", "check_precision", "check_accelerator", "check_seed",
           "check_ckpt_path", "check_callbacks", "check_model_data", "SEED_MAX"]
