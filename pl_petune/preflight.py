"""Checks of a parsed ``petune fit|validate|test`` config before anything is built or written.

Lightning, torch and Hugging Face check many values only when they use them: after the store row, the run
folder and minutes of tokenizing, with a traceback (a seed numpy cannot take, a ``max_length`` beyond the
backbone's position table, an accelerator the machine lacks), or never, training on in silence (a negative
patience, a negative gradient clip that flips every gradient), or they stop without a best checkpoint
(``max_epochs 0``, ``limit_train_batches 0``, ``save_top_k 0``). :func:`check_config` refuses each of them with
one line naming the key, the value and what is allowed; :func:`check_recipe_files` refuses a recipe that is not
UTF-8; :func:`strict_yaml` makes jsonargparse refuse a YAML mapping with a key given twice (PyYAML keeps the last
one silently).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from pl_petune.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's SeedSequence / RandomState range, which seed_everything and the samplers use
# Model types whose learned positions start after the padding index (RobertaEmbeddings.create_position_ids...).
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert",
                            "longformer", "mpnet", "luke", "markuplm"}
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")
DUPLICATE = "is given twice"


def _get(ns: Any, dotted: str, default: Any = None) -> Any:
    cur = ns
    for part in dotted.split("."):
        if cur is None:
            return default
        cur = cur.get(part) if hasattr(cur, "get") else getattr(cur, part, None)
    return default if cur is None else cur


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_seed(key: str, value: Any) -> None:
    """Seeds must be whole numbers numpy accepts."""
    if value is None:
        return
    if not _is_int(value) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key} {value!r} is outside the seed range; use a whole number from 0 to {SEED_MAX}")


def _count_or_fraction(key: str, value: Any, what: str) -> None:
    """Lightning's ``limit_*_batches`` / ``val_check_interval``: a count >= 1 or a fraction in (0, 1]."""
    if value is None:
        return
    if _is_int(value):
        if value < 1:
            raise ConfigError(f"{key} {value} leaves {what}; use a number of batches >= 1 or a fraction in (0, 1]")
    elif isinstance(value, float):
        if not 0.0 < value <= 1.0 or math.isnan(value):
            raise ConfigError(f"{key} {value} leaves {what}; use a fraction in (0, 1] or a number of batches >= 1")


def check_trainer(trainer: Any, fitting: bool) -> None:
    """Trainer values whose mistakes Lightning reports late, with a traceback, or not at all."""
    max_epochs, max_steps = _get(trainer, "max_epochs"), _get(trainer, "max_steps", -1)
    if fitting:
        if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < 1):
            why = ("(no limit) leaves the learning-rate schedule without an end" if max_epochs == -1
                   else "trains nothing to select")
            raise ConfigError(f"trainer.max_epochs {max_epochs} {why}; use a whole number of epochs >= 1")
        if _is_int(max_steps) and max_steps != -1 and max_steps < 1:
            raise ConfigError(f"trainer.max_steps {max_steps} trains nothing; use -1 (no step limit) or a number >= 1")
        if _get(trainer, "fast_dev_run"):
            raise ConfigError(f"trainer.fast_dev_run {_get(trainer, 'fast_dev_run')!r} turns off checkpoints and logs, "
                              "so petune fit has no best checkpoint to test; use --trainer.max_epochs 1 "
                              "--trainer.limit_train_batches N for a quick run")
        _count_or_fraction("trainer.limit_train_batches", _get(trainer, "limit_train_batches"), "no training batches")
        _count_or_fraction("trainer.limit_val_batches", _get(trainer, "limit_val_batches"),
                           "no development batches to stop and select on")
        _count_or_fraction("trainer.val_check_interval", _get(trainer, "val_check_interval"),
                           "no validation to stop and select on")
        every = _get(trainer, "check_val_every_n_epoch")
        if every is not None:
            if not _is_int(every) or every < 1:
                raise ConfigError(f"trainer.check_val_every_n_epoch {every!r} never validates; use a whole number >= 1")
            if _is_int(max_epochs) and every > max_epochs:
                raise ConfigError(f"trainer.check_val_every_n_epoch {every} is more than trainer.max_epochs "
                                  f"{max_epochs}: the development split would never be evaluated; use at most "
                                  f"{max_epochs}")
        min_epochs = _get(trainer, "min_epochs")
        if min_epochs is not None and (not _is_int(min_epochs) or min_epochs < 0
                                       or (_is_int(max_epochs) and min_epochs > max_epochs)):
            raise ConfigError(f"trainer.min_epochs {min_epochs!r} must be a whole number from 0 to trainer.max_epochs "
                              f"{max_epochs}")
        check_devices(_get(trainer, "devices"))
    acc = _get(trainer, "accumulate_grad_batches")
    if acc is not None and (not _is_int(acc) or acc < 1):
        raise ConfigError(f"trainer.accumulate_grad_batches {acc!r} must be a whole number >= 1")
    clip = _get(trainer, "gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip < 0 or math.isnan(clip)):
        raise ConfigError(f"trainer.gradient_clip_val {clip!r} must be >= 0 (0 or null: no clipping); a negative "
                          "norm would flip the gradients' sign")
    log_n = _get(trainer, "log_every_n_steps")
    if log_n is not None and (not _is_int(log_n) or log_n < 1):
        raise ConfigError(f"trainer.log_every_n_steps {log_n!r} must be a whole number >= 1")
    sanity = _get(trainer, "num_sanity_val_steps")
    if sanity is not None and (not _is_int(sanity) or sanity < -1):
        raise ConfigError(f"trainer.num_sanity_val_steps {sanity!r} must be -1 (all), 0 (none) or a number >= 1")
    check_accelerator(_get(trainer, "accelerator"), _get(trainer, "devices"))
    check_precision(_get(trainer, "precision"), _get(trainer, "accelerator"))


def check_devices(devices: Any) -> None:
    """``petune fit`` is one run in one process on one device (its lock, record and single test pass)."""
    many = (_is_int(devices) and devices > 1) or (isinstance(devices, (list, tuple)) and len(devices) > 1) or (
        isinstance(devices, str) and (devices.strip().isdigit() and int(devices) > 1 or "," in devices.strip(", ")))
    if many:
        raise ConfigError(f"trainer.devices {devices!r} would train one run on several devices; petune fit trains one "
                          "run on one device (use 1, or petune sweep --workers/--devices to run runs side by side)")


def check_precision(precision: Any, accelerator: Any) -> None:
    """float16 training needs a GPU: on CPU Lightning fails mid-training (its grad scaler and clipping)."""
    if str(precision) not in ("16", "16-mixed", "16-true"):
        return
    import torch

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if on_cpu:
        raise ConfigError(f"trainer.precision {str(precision)!r} needs a GPU and runs on CPU here; use 32-true or "
                          "bf16-mixed")


def check_accelerator(accelerator: Any, devices: Any = None) -> None:
    """A named accelerator must exist and be usable on this machine (Lightning says so only mid-setup)."""
    if ((_is_int(devices) and (devices == 0 or devices < -1))
            or (isinstance(devices, str) and devices.strip() in ("0", ""))):
        raise ConfigError(f"trainer.devices {devices!r} selects no device; use a number >= 1, -1 (all) or 'auto'")
    if not isinstance(accelerator, str) or accelerator == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = sorted(set(AcceleratorRegistry.available_accelerators()) | {"gpu"})
    usable = ["cpu"] + [n for n in ("cuda", "mps") if _usable(AcceleratorRegistry, n)]
    if accelerator not in names:
        raise ConfigError(f"trainer.accelerator {accelerator!r} is unknown; known: auto, {', '.join(names)} "
                          f"(usable here: {', '.join(usable)})")
    name = {"gpu": "cuda" if _usable(AcceleratorRegistry, "cuda") or not _usable(AcceleratorRegistry, "mps")
            else "mps"}.get(accelerator, accelerator)
    if not _usable(AcceleratorRegistry, name):
        raise ConfigError(f"trainer.accelerator {accelerator!r} is not available on this machine; "
                          f"usable here: auto, {', '.join(usable)}")
    if name == "cuda" and _is_int(devices):
        import torch

        have = torch.cuda.device_count()
        if devices > have:
            raise ConfigError(f"trainer.devices {devices} asks for more GPUs than this machine has ({have})")


def _usable(registry: Any, name: str) -> bool:
    try:
        return bool(registry[name]["accelerator"].is_available())
    except Exception:  # an accelerator whose probe needs a missing package (torch_xla) is not usable
        return False


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
    if not _is_int(n):
        return None
    if getattr(config, "model_type", "") in PADDING_OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", 1) or 0) + 1  # type: ignore[operator]
    return n


def check_model_data(model_args: Any, data: Any, check_backbone: bool = True) -> None:
    """Seeds of model and data; the backbone exists offline and its positions hold ``data.max_length``."""
    check_seed("model.init_args.init_seed", _get(model_args, "init_seed"))
    check_seed("data.data_seed", _get(data, "data_seed"))
    workers = _get(data, "num_workers")
    if workers is not None and (not _is_int(workers) or workers < 0):
        raise ConfigError(f"data.num_workers {workers!r} must be 0 (load in the main process) or more")
    backbone = _get(model_args, "backbone")
    if not check_backbone or not isinstance(backbone, str):
        return
    config = backbone_config(backbone)
    limit = position_limit(config)
    max_length = _get(data, "max_length")
    extra = _get(model_args, "prompt_length", 0) or 0  # prompt tuning puts its soft tokens in the sequence
    if limit is not None and _is_int(max_length) and max_length + extra > limit:
        used = f"data.max_length {max_length}" + (f" + {extra} prompt tokens" if extra else "")
        raise ConfigError(f"{used} is beyond the {limit} positions of backbone {backbone!r}; use data.max_length <= "
                          f"{limit - extra}")


def check_callbacks(cfg: Any) -> None:
    """The checkpoint and early-stopping values petune's selection relies on."""
    top_k = _get(cfg, "checkpoint.save_top_k")
    if top_k is not None and (not _is_int(top_k) or top_k == 0 or top_k < -1):
        raise ConfigError(f"checkpoint.save_top_k {top_k!r} keeps no best checkpoint to test; use 1 (the best), "
                          "k >= 1, or -1 (all)")
    every = _get(cfg, "checkpoint.every_n_epochs")
    if every is not None and (not _is_int(every) or every < 1):
        raise ConfigError(f"checkpoint.every_n_epochs {every!r} never saves a checkpoint; use a whole number >= 1")
    patience = _get(cfg, "early_stopping.patience")
    if patience is not None and (not _is_int(patience) or patience < 0):
        raise ConfigError(f"early_stopping.patience {patience!r} must be a whole number of validations >= 0")
    delta = _get(cfg, "early_stopping.min_delta")
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
    check_seed("run.seed", _get(cfg, "run.seed"))
    check_output_path("run.out_dir", _get(cfg, "run.out_dir"), "folder")
    if fitting:
        from pl_petune.store import default_store_path

        check_output_path("run.store", _get(cfg, "run.store") or default_store_path(), "file")
    else:
        check_output_path("trainer.default_root_dir", _get(cfg, "trainer.default_root_dir"), "folder")
    check_trainer(_get(cfg, "trainer"), fitting)
    if fitting:
        check_callbacks(cfg)
    check_ckpt_path(_get(cfg, "ckpt_path"))
    check_model_data(_get(cfg, "model.init_args"), _get(cfg, "data"), check_backbone)


# ---- recipe files --------------------------------------------------------------------------------------------
def recipe_paths(argv: Iterable[str]) -> list[Path]:
    """The files an argv hands jsonargparse to read: ``--config X`` / ``--config=X`` and any option whose value
    is an existing ``.yaml``/``.yml``/``.json`` file (jsonargparse reads ``--model m.yaml`` as a file too)."""
    out: list[Path] = []
    for tok in argv:
        value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
        if value.lower().endswith(RECIPE_SUFFIXES) and os.path.isfile(value):
            out.append(Path(value))
    return out


def check_recipe_files(argv: Iterable[str]) -> None:
    """Every recipe file of ``argv`` must be UTF-8 text (jsonargparse would raise a bare UnicodeDecodeError)
    whose mappings give each key once (the message names the file; YAML syntax errors are left to jsonargparse),
    and no half of a base + method recipe may come alone (:func:`pl_petune.packaged.check_layers`)."""
    import yaml

    from pl_petune.packaged import check_layers

    argv = list(argv)
    check_layers(argv)

    strict_yaml()
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    StrictSafeLoader = get_yaml_default_loader()
    assert issubclass(StrictSafeLoader, yaml.SafeLoader) or issubclass(StrictSafeLoader, yaml.CSafeLoader)
    for path in recipe_paths(argv):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                              "save it as UTF-8") from None
        try:
            yaml.load(text, Loader=StrictSafeLoader)
        except yaml.constructor.ConstructorError as err:
            if DUPLICATE in str(err.problem):
                raise ConfigError(f"recipe {str(path)!r}: {err.problem}") from None
        except yaml.YAMLError:
            pass


def strict_yaml() -> None:
    """Make jsonargparse's YAML loader refuse a mapping that gives one key twice (idempotent).

    PyYAML keeps the last value of a repeated key, so ``trainer: {max_epochs: 2}`` followed later by another
    ``trainer:`` block silently drops the first block. YAML 1.2 says keys are unique; this enforces it.
    """
    import yaml
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    loader = get_yaml_default_loader()
    if getattr(loader, "_petune_strict", False):
        return

    def construct_unique_map(self: Any, node: Any) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} {DUPLICATE} (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "YAML keys must be unique: keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return yaml.constructor.SafeConstructor.construct_yaml_map(self, node)

    loader.add_constructor("tag:yaml.org,2002:map", construct_unique_map)
    loader._petune_strict = True


__all__ = ["check_config", "check_recipe_files", "strict_yaml", "backbone_config", "position_limit",
           "check_output_path", "check_accelerator", "check_seed", "check_ckpt_path", "SEED_MAX"]
