"""Helpers shared by the callbacks: selectors from config, attribute contracts, DDP re-wrapping, schedulers.

Private to ``pl_petune.callbacks``; depends on lightning and torch only.
"""

from __future__ import annotations

import gc
import hashlib
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from pl_petune.callbacks.selection import ParamSelector, SelectionError

# A selector as Python users write it (ParamSelector) or as YAML gives it (a mapping of its fields).
SelectorLike = Union[ParamSelector, Mapping[str, Any]]

_SELECTOR_FIELDS = ("include", "module_types", "exclude", "bias_only", "layers", "layer_pattern", "allow_empty")
# Strategies whose parameter sharding or engines make requires_grad flips and optimizer rebuilds unsafe here.
_REFUSED_STRATEGIES = ("DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "XLAStrategy")


class CallbackMisuse(ValueError):
    """A callback was configured or attached in a way it cannot honour; the message names the fix."""


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (a checkpoint in a run record)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes), for run records and resume checks."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def as_selector(value: SelectorLike, what: str) -> ParamSelector:
    """A :class:`ParamSelector` from an instance or a mapping of its fields (YAML)."""
    if isinstance(value, ParamSelector):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_SELECTOR_FIELDS))
        if unknown:
            raise CallbackMisuse(f"{what}: unknown selector field(s) {unknown}; known: {', '.join(_SELECTOR_FIELDS)}")
        return ParamSelector(**dict(value))
    raise CallbackMisuse(f"{what}: expected a ParamSelector or a mapping of its fields, got {type(value).__name__}")


def resolve_union(module: nn.Module, selectors: Sequence[ParamSelector], prefix: str = "") -> list[str]:
    """Names (``module.named_parameters()`` order) selected by any selector; ``prefix`` restricts to a subtree."""
    picked: set[str] = set()
    for sel in selectors:
        picked.update(sel.resolve(module))
    return [n for n, _ in module.named_parameters() if n in picked and n.startswith(prefix)]


def get_submodule(pl_module: nn.Module, attr: str, role: str, arg: str) -> nn.Module:
    """``pl_module.<attr>`` (dotted path allowed), refused with the fix when missing or not a module."""
    obj: Any = pl_module
    for part in attr.split("."):
        if not hasattr(obj, part):
            children = ", ".join(n for n, _ in pl_module.named_children()) or "none"
            raise CallbackMisuse(f"{type(pl_module).__name__} has no {role} attribute {attr!r} (its children: "
                                 f"{children}); set {arg}= to the attribute that holds the {role}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        raise CallbackMisuse(f"{type(pl_module).__name__}.{attr} is a {type(obj).__name__}, not an nn.Module; set "
                             f"{arg}= to the attribute that holds the {role}")
    return obj


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


def extend_scheduler(scheduler: Any, base_lr: float) -> None:
    """Make ``scheduler`` schedule a param group just appended to its optimizer (F3).

    Schedulers keep one base lr (and, for LambdaLR, one lambda) per group seen at construction, and silently
    leave later groups alone (huggingface/transformers#20029); cyclic ones cannot be extended at all.
    """
    name = type(scheduler).__name__
    if name in ("OneCycleLR", "CyclicLR", "SequentialLR", "ChainedScheduler"):
        raise CallbackMisuse(f"cannot add a param group under {name}: it cannot schedule a group added later; "
                             "use a LambdaLR (e.g. transformers' linear warmup) or unfreeze from the start")
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


def named_tensors(module: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    table = dict(module.named_parameters())
    return {n: table[n] for n in names}


def describe(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def is_fitting(trainer: Trainer) -> bool:
    from lightning.pytorch.trainer.states import TrainerFn

    return trainer.state.fn == TrainerFn.FITTING


def callback_state(checkpoint: Mapping[str, Any], key: str) -> Optional[dict[str, Any]]:
    """This callback's entry in a full checkpoint dict (``None`` when the checkpoint predates it)."""
    return checkpoint.get("callbacks", {}).get(key)


def module_of(trainer: Trainer, pl_module: Optional[LightningModule] = None) -> LightningModule:
    return pl_module if pl_module is not None else trainer.lightning_module


__all__ = ["SelectorLike", "CallbackMisuse", "SelectionError", "as_selector", "resolve_union", "get_submodule",
           "submodule_prefix", "check_strategy", "rewrap_ddp", "optimizer_param_ids", "extend_scheduler",
           "lambda_factor", "linear_warmup_decay", "steps_per_epoch", "named_tensors", "describe", "is_fitting",
           "callback_state", "module_of"]
