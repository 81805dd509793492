"""Preflight checks of the ``trainer`` options whose mistakes Lightning reports late, with a traceback, or not at
all (a schedule without an end, no batches to select on, a negative clip, an accelerator this machine lacks).
"""

from __future__ import annotations

import math
from typing import Any

from pl_petune.config_values import config_value, is_whole_number
from pl_petune.errors import ConfigError


def _count_or_fraction(key: str, value: Any, what: str) -> None:
    """Lightning's ``limit_*_batches`` / ``val_check_interval``: a count >= 1 or a fraction in (0, 1]."""
    if value is None:
        return
    if is_whole_number(value):
        if value < 1:
            raise ConfigError(f"{key} {value} leaves {what}; use a number of batches >= 1 or a fraction in (0, 1]")
    elif isinstance(value, float):
        if not 0.0 < value <= 1.0 or math.isnan(value):
            raise ConfigError(f"{key} {value} leaves {what}; use a fraction in (0, 1] or a number of batches >= 1")


def check_trainer(trainer: Any, fitting: bool) -> None:
    """Trainer values whose mistakes Lightning reports late, with a traceback, or not at all."""
    max_epochs, max_steps = config_value(trainer, "max_epochs"), config_value(trainer, "max_steps", -1)
    if fitting:
        if max_epochs is not None and (not is_whole_number(max_epochs) or max_epochs < 1):
            why = ("(no limit) leaves the learning-rate schedule without an end" if max_epochs == -1
                   else "trains nothing to select")
            raise ConfigError(f"trainer.max_epochs {max_epochs} {why}; use a whole number of epochs >= 1")
        if is_whole_number(max_steps) and max_steps != -1 and max_steps < 1:
            raise ConfigError(f"trainer.max_steps {max_steps} trains nothing; use -1 (no step limit) or a number >= 1")
        fast_dev_run = config_value(trainer, "fast_dev_run")
        if fast_dev_run:
            raise ConfigError(f"trainer.fast_dev_run {fast_dev_run!r} turns off checkpoints and logs, so petune fit "
                              "has no best checkpoint to test; use --trainer.max_epochs 1 "
                              "--trainer.limit_train_batches N for a quick run")
        _count_or_fraction("trainer.limit_train_batches", config_value(trainer, "limit_train_batches"),
                           "no training batches")
        _count_or_fraction("trainer.limit_val_batches", config_value(trainer, "limit_val_batches"),
                           "no development batches to stop and select on")
        _count_or_fraction("trainer.val_check_interval", config_value(trainer, "val_check_interval"),
                           "no validation to stop and select on")
        every = config_value(trainer, "check_val_every_n_epoch")
        if every is not None:
            if not is_whole_number(every) or every < 1:
                raise ConfigError(f"trainer.check_val_every_n_epoch {every!r} never validates; use a whole number >= 1")
            if is_whole_number(max_epochs) and every > max_epochs:
                raise ConfigError(f"trainer.check_val_every_n_epoch {every} is more than trainer.max_epochs "
                                  f"{max_epochs}: the development split would never be evaluated; use at most "
                                  f"{max_epochs}")
        min_epochs = config_value(trainer, "min_epochs")
        if min_epochs is not None and (not is_whole_number(min_epochs) or min_epochs < 0
                                       or (is_whole_number(max_epochs) and min_epochs > max_epochs)):
            raise ConfigError(f"trainer.min_epochs {min_epochs!r} must be a whole number from 0 to trainer.max_epochs "
                              f"{max_epochs}")
        check_devices(config_value(trainer, "devices"))
    acc = config_value(trainer, "accumulate_grad_batches")
    if acc is not None and (not is_whole_number(acc) or acc < 1):
        raise ConfigError(f"trainer.accumulate_grad_batches {acc!r} must be a whole number >= 1")
    clip = config_value(trainer, "gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip < 0 or math.isnan(clip)):
        raise ConfigError(f"trainer.gradient_clip_val {clip!r} must be >= 0 (0 or null: no clipping); a negative "
                          "norm would flip the gradients' sign")
    log_n = config_value(trainer, "log_every_n_steps")
    if log_n is not None and (not is_whole_number(log_n) or log_n < 1):
        raise ConfigError(f"trainer.log_every_n_steps {log_n!r} must be a whole number >= 1")
    sanity = config_value(trainer, "num_sanity_val_steps")
    if sanity is not None and (not is_whole_number(sanity) or sanity < -1):
        raise ConfigError(f"trainer.num_sanity_val_steps {sanity!r} must be -1 (all), 0 (none) or a number >= 1")
    check_accelerator(config_value(trainer, "accelerator"), config_value(trainer, "devices"))
    check_precision(config_value(trainer, "precision"), config_value(trainer, "accelerator"))


def check_devices(devices: Any) -> None:
    """``petune fit`` is one run in one process on one device (its lock, record and single test pass)."""
    many = (is_whole_number(devices) and devices > 1) or (isinstance(devices, (list, tuple)) and len(devices) > 1) or (
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
    if ((is_whole_number(devices) and (devices == 0 or devices < -1))
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
    if name == "cuda" and is_whole_number(devices):
        import torch

        have = torch.cuda.device_count()
        if devices > have:
            raise ConfigError(f"trainer.devices {devices} asks for more GPUs than this machine has ({have})")


def _usable(registry: Any, name: str) -> bool:
    try:
        return bool(registry[name]["accelerator"].is_available())
    except Exception:  # an accelerator whose probe needs a missing package (torch_xla) is not usable
        return False


__all__ = ["check_trainer", "check_devices", "check_precision", "check_accelerator"]
