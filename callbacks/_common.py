"""Helpers shared by the callbacks: selectors from config, attribute contracts, DDP re-wrapping, schedulers.

Private to ``pl_petune.callbacks``; depends on lightning and torch only.
"""

from __future__ import annotations

import gc
import hashlib
import math
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from lightning.pytorch import Trainer
from pl_petune.callbacks._errors import CallbackMisuse
from pl_petune.callbacks.selection import ParamSelector, SelectionError
from torch import nn

# A selector as Python users write it (ParamSelector) or as YAML gives it (a mapping of its fields).
SelectorLike = Union[ParamSelector, Mapping[str, Any]]

_SELECTOR_FIELDS = ("include", "module_types", "exclude", "bias_only", "layers", "layer_pattern", "allow_empty")
# Strategies whose parameter sharding or engines make requires_grad flips and optimizer rebuilds unsafe here.
_REFUSED_STRATEGIES = ("DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "XLAStrategy")


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (a checkpoint in a run record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes), for run records and resume checks."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def as_selector(value: SelectorLike, what: str, extra_keys: Sequence[str] = ()) -> ParamSelector:
    """A :class:`ParamSelector` from an instance or a mapping of its fields (YAML), refused with ``what`` named.

    Args:
        value: the selector or the mapping.
        what: the callback and argument, e.g. ``"Freezing.freeze[0]"``, put in front of any error.
        extra_keys: keys the caller reads itself from the mapping (e.g. an unfreeze step's ``epoch``, ``lr``);
            listed among the allowed keys when an unknown one is refused.
    """
    if isinstance(value, ParamSelector):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_SELECTOR_FIELDS) - set(extra_keys))
        if unknown:
            raise CallbackMisuse(f"{what}: unknown key(s) {unknown}; allowed: "
                                 f"{', '.join([*extra_keys, *_SELECTOR_FIELDS])}")
        try:
            return ParamSelector(**{k: v for k, v in value.items() if k not in extra_keys})
        except SelectionError as err:
            raise CallbackMisuse(f"{what}: {err}") from None
    raise CallbackMisuse(f"{what}: expected a ParamSelector or a mapping of its fields, got {type(value).__name__}")


def resolve(selector: ParamSelector, module: nn.Module, what: str) -> list[str]:
    """``selector.resolve(module)``, with a failure re-raised naming the callback and argument ``what``."""
    try:
        return selector.resolve(module)
    except SelectionError as err:
        raise CallbackMisuse(f"{what}: {err}") from None


def resolve_union(module: nn.Module, selectors: Sequence[ParamSelector], what: str, prefix: str = "") -> list[str]:
    """Names (``module.named_parameters()`` order) selected by any selector; ``prefix`` restricts to a subtree."""
    picked: set[str] = set()
    for i, sel in enumerate(selectors):
        picked.update(resolve(sel, module, f"{what}[{i}]"))
    return [n for n, _ in module.named_parameters() if n in picked and n.startswith(prefix)]


def get_submodule(pl_module: nn.Module, attr: str, role: str, arg: str) -> nn.Module:
    """``pl_module.<attr>`` (dotted path allowed), refused naming ``arg`` (e.g. ``"HeadWarmStart.head_attr"``)."""
    current: Any = pl_module
    for part in attr.split("."):
        if not hasattr(current, part):
            children = ", ".join(n for n, _ in current.named_children()) if isinstance(current, nn.Module) else ""
            raise CallbackMisuse(f"{arg}={attr!r}: {type(current).__name__} has no attribute {part!r} (its children: "
                                 f"{children or 'none'}); set {arg} to the attribute that holds the {role}")
        current = getattr(current, part)
    if not isinstance(current, nn.Module):
        raise CallbackMisuse(f"{arg}={attr!r} is a {type(current).__name__}, not an nn.Module; set {arg} to the "
                             f"attribute that holds the {role}")
    return current


def submodule_prefix(pl_module: nn.Module, sub: nn.Module) -> str:
    """The ``named_parameters`` prefix (``"backbone."``) of a submodule of ``pl_module``."""
    for name, mod in pl_module.named_modules():
        if mod is sub:
            return f"{name}." if name else ""
    raise CallbackMisuse(f"{type(sub).__name__} is not a submodule of {type(pl_module).__name__}")


def check_strategy(trainer: Trainer, owner: str) -> None:
    """Refuse strategies that shard parameters or own the optimizer (Lightning refuses DeepSpeed likewise)."""
    name = type(trainer.strategy).__name__
    if name in _REFUSED_STRATEGIES:
        raise CallbackMisuse(f"{owner} does not support {name}; use a single device or strategy='ddp' / 'ddp_spawn'")


def rewrap_ddp(trainer: Trainer) -> bool:
    """Re-create the DDP wrapper after the trainable set or the module tree changed.

    DDP registers gradient reduction only for parameters that required grad when it was built, so a
    ``requires_grad`` flip after wrapping is never synchronised (Lightning-AI/pytorch-lightning#20340).
    Returns whether a wrapper was rebuilt.
    """
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        return False
    configure = getattr(strategy, "configure_ddp", None)
    if configure is None:
        raise CallbackMisuse(f"cannot re-wrap the model for {type(strategy).__name__}; use strategy='ddp'")
    strategy.model = strategy.lightning_module
    configure()
    gc.collect()  # drop the old reducer (and its autograd hooks) now
    return True


def optimizer_param_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


_NOT_EXTENDABLE = ("OneCycleLR", "CyclicLR", "SequentialLR", "ChainedScheduler")


def check_extendable(scheduler: Any, owner: str) -> None:
    """Refuse, at fit start, a scheduler that cannot schedule a param group added later."""
    name = type(scheduler).__name__
    if name in _NOT_EXTENDABLE:
        raise CallbackMisuse(f"{owner} adds a param group mid-fit, which {name} cannot schedule; use a LambdaLR "
                             "(e.g. transformers' linear warmup), StepLR, ReduceLROnPlateau, or no scheduler")


def extend_scheduler(scheduler: Any, base_lr: float) -> None:
    """Make ``scheduler`` schedule a param group just appended to its optimizer (F3).

    Schedulers keep one base lr (and, for LambdaLR, one lambda) per group seen at construction, and silently
    leave later groups alone (huggingface/transformers#20029); cyclic ones cannot be extended at all.
    """
    name = type(scheduler).__name__
    check_extendable(scheduler, "Freezing")
    if name == "ReduceLROnPlateau":
        scheduler.min_lrs.append(scheduler.min_lrs[0])
        scheduler.default_min_lr = None
        return
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs.append(base_lr)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr.append(scheduler.optimizer.param_groups[-1]["lr"])


def lambda_factor(scheduler: Any) -> float:
    """The multiplier a LambdaLR applies at its current step (1.0 for other schedulers)."""
    fns = getattr(scheduler, "lr_lambdas", None)
    if not fns or type(scheduler).__name__ not in ("LambdaLR",):
        return 1.0
    return float(fns[0](scheduler.last_epoch))


def linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps to 1, then linear decay to 0 at ``total`` (transformers' curve)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def steps_per_epoch(trainer: Trainer) -> int:
    """Optimizer steps in one training epoch on this rank (the loader is set up if it is not yet)."""
    _ = trainer.estimated_stepping_batches  # sets up the train dataloader
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise CallbackMisuse("the train dataloader has no length; stages in epochs need a sized dataloader")
    return max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))


def describe(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def backbone_names(pl_module: nn.Module, backbone_attr: str, owner: str) -> list[str]:
    """Every parameter name under ``pl_module.<backbone_attr>`` (the shared default of Freezing and ChildTuningD)."""
    backbone = get_submodule(pl_module, backbone_attr, "backbone", f"{owner}.backbone_attr")
    prefix = submodule_prefix(pl_module, backbone)
    names = [n for n, _ in pl_module.named_parameters() if n.startswith(prefix)]
    if not names:
        raise CallbackMisuse(f"{owner}: the backbone {backbone_attr!r} has no parameters; set backbone_attr= to the "
                             "attribute that holds the pretrained model")
    return names


__all__ = ["SelectorLike", "CallbackMisuse", "SelectionError", "as_selector", "resolve", "resolve_union",
           "get_submodule", "submodule_prefix", "backbone_names", "check_strategy", "rewrap_ddp",
           "optimizer_param_ids", "check_extendable", "extend_scheduler", "lambda_factor", "linear_warmup_decay",
           "steps_per_epoch", "describe", "file_sha256", "tensor_sha256"]
