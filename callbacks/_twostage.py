"""The mechanics of HeadWarmStart's two stages, as plain functions: the plan, finding a checkpoint's state,
resetting other callbacks through their public state, the BitFit bias and its seed, the stage optimizer, the
backbone restored, the record. Following modules through the PET drop is :mod:`._module_parts`.

Private to ``pl_petune.callbacks``; depends on lightning and torch only.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.types import LRSchedulerConfig
from pl_petune.callbacks._common import (
    CallbackMisuse,
    describe,
    linear_warmup_decay,
    steps_per_epoch,
    submodule_prefix,
)
from torch import nn

# The checkpoint entry holding, in stage 1, the pretrained values of the tensors stage 1 may change; checkpoints
# written before it was renamed hold it under the old key, which is still read.
PRETRAINED_KEY = "pretrained_changeable"
_OLD_PRETRAINED_KEY = "pretrained_volatile"


def check_plan(solver: str, stage1_epochs: Optional[Union[int, float]]) -> Union[int, float]:
    """The validated ``stage1_epochs`` (an int >= 1, a fraction in (0, 1), or 0 for the probe)."""
    if solver not in ("adamw", "lbfgs"):
        raise CallbackMisuse(f"HeadWarmStart.solver {solver!r} is unknown; use 'adamw' or 'lbfgs'")
    if solver == "lbfgs":
        if stage1_epochs not in (None, 0):
            raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={stage1_epochs} with solver='lbfgs': the probe is "
                                 "solved before epoch 0, so stage 1 has no epochs; remove stage1_epochs")
        return 0
    value = 0.1 if stage1_epochs is None else stage1_epochs
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CallbackMisuse(f"HeadWarmStart.stage1_epochs must be an int or a float, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float) and not 0 < value < 1:
        raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={value} is out of range; give a fraction of max_epochs in "
                             "(0, 1) (EH-FT: 0.1) or a whole number of epochs >= 1")
    if isinstance(value, int) and value < 1:
        raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={value} is out of range; give a whole number of epochs "
                             ">= 1 or a fraction of max_epochs in (0, 1)")
    return value


def resolve_plan(stage1_epochs: Union[int, float], max_epochs: Optional[int]) -> tuple[int, int]:
    """``(stage-1 epochs, max_epochs)`` of a fit: a fraction is floored, at least 1 (EH-FT's 10 %)."""
    if max_epochs is None or max_epochs < 1:
        raise CallbackMisuse(f"HeadWarmStart counts stages in epochs but Trainer(max_epochs={max_epochs}); "
                             "set trainer max_epochs")
    stage1 = (max(1, math.floor(stage1_epochs * max_epochs + 1e-9)) if isinstance(stage1_epochs, float)
              else int(stage1_epochs))
    if stage1 >= max_epochs:
        raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={stage1_epochs} gives {stage1} stage-1 epochs of "
                             f"max_epochs={max_epochs}, leaving none for stage 2; lower stage1_epochs or raise "
                             "max_epochs")
    return stage1, max_epochs


def check_resumed_plan(state: dict[str, Any], stage1_epochs: int, max_epochs: int) -> None:
    """Refuse to resume a checkpoint whose stage plan differs from this run's."""
    if state["stage1_epochs"] != stage1_epochs or state.get("max_epochs", max_epochs) != max_epochs:
        raise CallbackMisuse(f"HeadWarmStart: the checkpoint's plan is {state['stage1_epochs']} stage-1 epochs of "
                             f"{state.get('max_epochs')}, this run plans {stage1_epochs} of {max_epochs}; resume "
                             "with the same stage1_epochs and max_epochs")


def pretrained_snapshot(pl_module: nn.Module, backbone: nn.Module, stage1_names: list[str],
                        resumed: Optional[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """CPU copies of the backbone's parameters and buffers at fit start, and the names stage 1 may change (its
    trainable backbone parameters and floating buffers, e.g. BatchNorm statistics).

    On a resume in stage 1 (``resumed``: the checkpoint's state) the module's changeable tensors were already
    trained, so their pretrained values come from the checkpoint.

    Raises:
        CallbackMisuse: a resumed stage-1 state without those values.
    """
    prefix = submodule_prefix(pl_module, backbone)
    tensors = {prefix + k: v for k, v in [*backbone.named_parameters(), *backbone.named_buffers()]}
    pretrained = {n: v.detach().to("cpu", copy=True) for n, v in tensors.items()}
    if resumed is not None:
        saved = resumed.get(PRETRAINED_KEY, resumed.get(_OLD_PRETRAINED_KEY))
        if saved is None:
            raise CallbackMisuse("HeadWarmStart: the stage-1 checkpoint holds no pretrained values of the tensors "
                                 f"stage 1 changes ({PRETRAINED_KEY!r}), so the backbone could not be restored at the "
                                 "switch; resume from a checkpoint HeadWarmStart wrote")
        pretrained.update({n: t.detach().to("cpu", copy=True) for n, t in saved.items()})
    stage1, params = set(stage1_names), dict(pl_module.named_parameters())
    changeable = [n for n, t in pretrained.items() if n in stage1 or (n not in params and t.is_floating_point())]
    return pretrained, changeable


def find_state(checkpoint: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """The entry under ``key``, else the single entry whose key starts with the class ``name``; else refused."""
    states = checkpoint.get("callbacks") or {}
    if key in states:
        return states[key]
    mine = [k for k in states if str(getattr(k, "__qualname__", k)).startswith(name)]
    if len(mine) == 1:
        return states[mine[0]]
    if mine:
        raise CallbackMisuse(f"{name}: the checkpoint holds {len(mine)} {name} states ({mine}); cannot tell which "
                             "one this run continues")
    raise CallbackMisuse(f"{name}: the checkpoint holds no {name} state (its callback states: "
                         f"{describe([str(k) for k in states]) or 'none'}), so its stage is unknown; load it with the "
                         f"{name} that wrote it, or without {name}")


def fresh_states(trainer: Trainer) -> list[tuple[Callback, dict[str, Any]]]:
    """Copies of the public state of the trainer's monitoring checkpoint and early-stopping callbacks."""
    watched: list[Callback] = [cb for cb in trainer.checkpoint_callbacks if cb.state_dict().get("monitor") is not None]
    watched += list(trainer.early_stopping_callbacks)
    return [(cb, copy.deepcopy(cb.state_dict())) for cb in watched]


def reset_callbacks(states: list[tuple[Callback, dict[str, Any]]]) -> Optional[str]:
    """Give each callback back its saved state (``load_state_dict``), keeping where it writes checkpoints.

    Returns:
        The best checkpoint path a ModelCheckpoint held before the reset (stage 1's best), if any.
    """
    best = None
    for cb, fresh in states:
        now = cb.state_dict()
        if now.get("best_model_path") and "best_k_models" in now:
            best = now["best_model_path"]
        keep = {k: now[k] for k in ("dirpath", "last_model_path") if k in now}
        cb.load_state_dict({**copy.deepcopy(fresh), **keep})  # type: ignore[dict-item]
    return best


def reinit_linear_biases(head: nn.Module, seed: int) -> None:
    """Every Linear bias of ``head`` drawn afresh from nn.Linear's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in head.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                bound = 1.0 / math.sqrt(mod.in_features) if mod.in_features > 0 else 0.0
                fresh = torch.rand(mod.bias.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound
                mod.bias.copy_(fresh.to(mod.bias.dtype))


def head_bias_seed(pl_module: Any, given: Optional[int]) -> int:
    """The seed of EH-FT's head-bias re-initialisation: ``given``, else the module's weight-init seed (its
    ``init_seed`` attribute or hyper-parameter), else the seed given to ``seed_everything``, else
    ``torch.initial_seed()``."""
    if given is not None:
        return given
    seed = getattr(pl_module, "init_seed", None)
    if seed is None:
        hparams = getattr(pl_module, "hparams", None)
        seed = hparams.get("init_seed") if hasattr(hparams, "get") else None  # type: ignore[union-attr]
    if isinstance(seed, int) and not isinstance(seed, bool):
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


def stage_optimizer(trainer: Trainer, stage: int, lr: Optional[float], to_adamw: bool, epochs: int,
                    warmup_ratio: float) -> str:
    """A fresh optimizer from ``configure_optimizers`` (as AdamW when ``to_adamw``) at ``lr`` (``None``: the
    module's own), with a linear warmup and decay over the stage's steps (EH-FT's schedule); returns its class."""
    trainer.strategy.setup_optimizers(trainer)
    optimizers = trainer.strategy.optimizers
    if len(optimizers) != 1:
        raise CallbackMisuse("HeadWarmStart needs exactly one optimizer; configure_optimizers returned "
                             f"{len(optimizers)}")
    opt = optimizers[0]
    if to_adamw and not isinstance(opt, torch.optim.AdamW):
        groups = [{"params": g["params"], "weight_decay": g.get("weight_decay", 0.0)} for g in opt.param_groups]
        opt = torch.optim.AdamW(groups, lr=lr)  # type: ignore[arg-type]
    for group in opt.param_groups:
        base = lr if lr is not None else group.get("initial_lr", group["lr"])
        group.pop("initial_lr", None)
        group["lr"] = base
    total = max(1, epochs * steps_per_epoch(trainer))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(math.ceil(warmup_ratio * total), total))
    trainer.strategy.optimizers = [opt]
    trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(sched, interval="step", name=f"stage{stage}")]
    return type(opt).__name__


def restore_pretrained(backbone: nn.Module, prefix: str, pretrained: dict[str, torch.Tensor],
                       by_id: dict[int, torch.Tensor], keep: set[str], reserve: bool, drop_fn: str) -> None:
    """Copy each backbone tensor's pretrained value back: found by identity (the drop may rename tensors),
    else by name (a drop that rebuilt the backbone); ``keep`` stays as trained."""
    with torch.no_grad():
        for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]:
            value = by_id.get(id(t))
            if value is None and prefix + name in pretrained and prefix + name not in keep:
                value = pretrained[prefix + name]
            if value is None:
                if reserve:
                    continue
                raise CallbackMisuse(f"HeadWarmStart: backbone tensor {name!r} did not exist at fit start, so it has "
                                     f"no pretrained value; {drop_fn}() must remove every added layer")
            t.copy_(value)


def record(cb: Any) -> dict[str, Any]:
    """HeadWarmStart's run record: the plan, the solver, the head's source, the switch and the probe."""
    head_source = ("L-BFGS logistic regression on frozen features (sklearn), "
                   f"C={cb._lbfgs.get('C')}" if cb.solver == "lbfgs" else
                   f"stage 1 ({cb._optimizer_name or 'AdamW'}, lr {cb.stage1_lr}, {cb._stage1_epochs} epochs)")
    if not cb.keep_head_bias:
        head_source += f"; weights only, biases re-initialised (seed {cb._head_bias_seed_used})"
    return {
        "solver": cb.solver,
        "stage_plan": {
            "stage1": {"epochs": cb._stage1_epochs, "lr": cb.stage1_lr, "warmup_ratio": cb.warmup_ratio,
                       "trainable": cb._stage1_count if cb._stage1_count is not None else len(cb._stage1_names),
                       "train_pet": cb.train_pet,
                       "extra": cb.stage1_params.describe() if cb.stage1_params else None},
            "stage2": {"epochs": cb._max_epochs - cb._stage1_epochs, "lr": cb.stage2_lr,
                       "warmup_ratio": cb.warmup_ratio,
                       "trainable": cb.stage2_params.describe() if cb.stage2_params else "module default"},
        },
        "stage": cb._stage, "switch_epoch": cb._switch_epoch, "reserve": cb.reserve,
        "pet_parameters": len(cb._pet), "head_source": head_source, "head_sha256_at_switch": cb._head_sha,
        "head_bias_seed": cb._head_bias_seed_used, "stage1_best_checkpoint": cb._stage1_best,
        "lbfgs": dict(cb._lbfgs) or None,
    }


__all__ = ["record", "stage_optimizer", "restore_pretrained", "check_plan", "resolve_plan", "find_state",
           "fresh_states", "reset_callbacks", "reinit_linear_biases", "head_bias_seed", "check_resumed_plan",
           "pretrained_snapshot", "PRETRAINED_KEY"]
