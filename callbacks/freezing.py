"""Freezing with an optional unfreeze schedule, in Lightning's ``BaseFinetuning`` convention, resume- and DDP-safe.

Differences from ``lightning.pytorch.callbacks.BaseFinetuning``, each a known upstream pitfall:

- parameters are chosen by :class:`~pl_petune.callbacks.ParamSelector` (name patterns, module types,
  bias-only, layer ranges), resolved to names, and new param groups take parameters by *identity*
  (``BaseFinetuning.filter_on_optimizer`` compares values with ``torch.equal``, so a zero-initialised tensor
  equal to one already in the optimizer is silently dropped);
- the callback's state holds the trainable names and the groups it added, and a resume re-applies
  ``requires_grad`` exactly (Lightning-AI/pytorch-lightning#21901) and rebuilds the groups before the
  optimizer state is loaded;
- freezing is decided in ``setup`` (before DDP wraps the model; for a module that builds its layers in
  ``configure_model``, right after that hook), and every later flip re-creates the DDP
  wrapper, so all ranks reduce the same gradients (Lightning-AI/pytorch-lightning#20340);
- a group added mid-fit is also added to the scheduler, which otherwise never schedules it (F3).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from pl_petune.callbacks._common import (
    CallbackMisuse,
    SelectorLike,
    as_selector,
    backbone_names,
    check_extendable,
    check_strategy,
    describe,
    extend_scheduler,
    lambda_factor,
    resolve,
    resolve_union,
    rewrap_ddp,
)
from pl_petune.callbacks.selection import DEFAULT_LAYER_PATTERN, ParamSelector
from torch import nn
from typing_extensions import override

_STEP_KEYS = ("epoch", "lr")


class Freezing(Callback):
    r"""Freeze parameters before training and unfreeze them on a schedule.

    At ``setup`` (right after the module's ``configure_model`` when it has one, so layers built there count)
    the union of ``freeze`` selectors, minus ``keep``, stops requiring grad (so ``configure_optimizers`` can
    leave it out). At the start of each epoch listed in ``unfreeze``, the
    step's parameters train again in a new param group with ``lr = step lr`` or ``lr_ratio × group 0's base
    lr``, scheduled like group 0. A parameter ``configure_optimizers`` already holds (frozen, so without
    gradient until now) moves out of its group into the new one, keeping that group's other
    hyper-parameters (weight decay, betas), so the step's lr always applies. Schedulers that cannot take a
    new group (OneCycleLR, CyclicLR, SequentialLR, ChainedScheduler) are refused at fit start.

    Args:
        freeze: selectors (a :class:`ParamSelector` or a mapping of its fields) whose union is frozen.
            Default: every parameter under ``pl_module.<backbone_attr>``.
        keep: selectors that stay trainable although ``freeze`` matches them (e.g. ``{"bias_only": True}``).
        top_k: shorthand for keeping the top ``k`` layers of the frozen set trainable (EH-FT's Top-K).
        unfreeze: steps, each ``{"epoch": int, "lr": float | None, <selector fields>}``; a step with no
            selector fields unfreezes everything still frozen.
        gradual_every: unfreeze one layer every this many epochs, top layer first (ULMFiT's gradual
            unfreezing), starting at ``gradual_start``; layers come from ``layer_pattern``. A parameter
            without a layer index goes with the layer before it in ``named_parameters()`` order (a pooler with
            the top layer); those before every layer (embeddings) unfreeze one step after layer 0.
        gradual_start: first epoch of gradual unfreezing.
        lr_ratio: the lr of an unfrozen group relative to group 0's base lr, when a step gives no ``lr``.
        train_bn: keep BatchNorm parameters trainable inside frozen modules (Lightning's default).
        layer_pattern: regex with one group capturing the layer index in a parameter name.
        optimizer_idx: the optimizer that receives unfrozen groups.
        backbone_attr: attribute (dotted path) of the module holding the backbone, for the default ``freeze``
            (the same argument as HeadWarmStart's and ChildTuningD's).

    Raises:
        CallbackMisuse: at construction: a bad regex or selector field, a step without an integer ``epoch``
            or with an unknown key (allowed: ``epoch``, ``lr`` and the selector fields); at setup: a selector
            that matches nothing; at fit start: a scheduler that cannot take a new group, a strategy that
            shards parameters.

    Example:
        >>> Freezing(freeze=[{"include": [r"^backbone\."]}], unfreeze=[{"epoch": 2, "lr": 1e-5}])
    """

    def __init__(
        self,
        freeze: Optional[Sequence[SelectorLike]] = None,
        keep: Sequence[SelectorLike] = (),
        top_k: Optional[int] = None,
        unfreeze: Sequence[Mapping[str, Any]] = (),
        gradual_every: Optional[int] = None,
        gradual_start: int = 1,
        lr_ratio: float = 0.1,
        train_bn: bool = True,
        layer_pattern: str = DEFAULT_LAYER_PATTERN,
        optimizer_idx: int = 0,
        backbone_attr: str = "backbone",
    ) -> None:
        super().__init__()
        freeze, keep, unfreeze = _as_list(freeze, "freeze"), _as_list(keep, "keep"), _as_list(unfreeze, "unfreeze")
        self.freeze = [as_selector(s, f"Freezing.freeze[{i}]") for i, s in enumerate(freeze)] if freeze else None
        self.keep = [as_selector(s, f"Freezing.keep[{i}]") for i, s in enumerate(keep)]
        self.backbone_attr = backbone_attr
        if top_k is not None and top_k < 1:
            raise CallbackMisuse(f"Freezing.top_k must be >= 1, got {top_k}; use freeze without top_k to freeze all")
        self.top_k = top_k
        bad = [i for i, step in enumerate(unfreeze) if not isinstance(step, Mapping)]
        if bad:
            raise CallbackMisuse(f"Freezing.unfreeze[{bad[0]}]={unfreeze[bad[0]]!r} must be a mapping such as "
                                 "{'epoch': 2, 'lr': 1e-5, <selector fields>}")
        self.unfreeze = [dict(step) for step in unfreeze]
        for i, step in enumerate(self.unfreeze):
            epoch, lr = step.get("epoch"), step.get("lr")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise CallbackMisuse(f"Freezing.unfreeze[{i}]={step} needs an integer 'epoch' >= 0; allowed keys: "
                                     f"{', '.join(_STEP_KEYS)} and the selector fields")
            if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
                raise CallbackMisuse(f"Freezing.unfreeze[{i}].lr={lr!r} must be a number > 0 or absent "
                                     "(then lr_ratio x group 0's lr)")
            if isinstance(step, Mapping):
                as_selector(step, f"Freezing.unfreeze[{i}]", extra_keys=_STEP_KEYS)
        if gradual_every is not None and gradual_every < 1:
            raise CallbackMisuse(f"Freezing.gradual_every must be >= 1, got {gradual_every}")
        if gradual_every is not None and self.unfreeze:
            raise CallbackMisuse("give either Freezing.unfreeze steps or gradual_every, not both")
        self.gradual_every = gradual_every
        self.gradual_start = gradual_start
        if lr_ratio <= 0:
            raise CallbackMisuse(f"Freezing.lr_ratio must be > 0, got {lr_ratio}")
        self.lr_ratio = lr_ratio
        self.train_bn = train_bn
        self.layer_pattern = layer_pattern
        self.optimizer_idx = optimizer_idx
        self._steps: list[dict[str, Any]] = []  # resolved: {"epoch", "lr", "names"}
        self._done: list[int] = []
        self._added: list[dict[str, Any]] = []  # {"step", "names", "lr"}
        self._restored: Optional[dict[str, Any]] = None
        self._module: Optional[LightningModule] = None
        self._wrapper: Optional[Any] = None  # our stand-in for the module's configure_model until it runs

    @property
    @override
    def state_key(self) -> str:
        # the schedule is part of the identity: two instances differing only in it must not share a state
        return self._generate_state_key(
            freeze=[s.describe() for s in self.freeze] if self.freeze else f"backbone:{self.backbone_attr}",
            keep=[s.describe() for s in self.keep], top_k=self.top_k,
            unfreeze=[{k: (v if k in _STEP_KEYS else str(v)) for k, v in sorted(step.items())}
                      for step in self.unfreeze],
            gradual=(self.gradual_every, self.gradual_start) if self.gradual_every else None)

    # ---- what is frozen ------------------------------------------------------------------------------
    def frozen_names(self, pl_module: nn.Module) -> list[str]:
        """Names frozen before training: ``freeze`` minus ``keep``, ``top_k`` and (with ``train_bn``) BatchNorm."""
        if self.freeze is None:
            names = backbone_names(pl_module, self.backbone_attr, "Freezing")
        else:
            names = resolve_union(pl_module, self.freeze, "Freezing.freeze")
        drop: set[str] = set(resolve_union(pl_module, self.keep, "Freezing.keep"))
        if self.top_k is not None:
            layers = self._layers(names)
            if not layers:
                raise CallbackMisuse(f"Freezing.top_k={self.top_k}: no layer index found in the frozen parameters "
                                     f"with layer_pattern {self.layer_pattern!r}; set layer_pattern")
            top = set(sorted(layers)[-self.top_k:])
            drop.update(n for n in names if self._layer_of(n) in top)
        if self.train_bn:
            for mod_name, mod in pl_module.named_modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    drop.update(f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False))
        out = [n for n in names if n not in drop]
        if not out:
            raise CallbackMisuse("Freezing selects no parameter to freeze (freeze minus keep/top_k is empty); "
                                 "widen freeze or narrow keep")
        return out

    def _layer_of(self, name: str) -> Optional[int]:
        return ParamSelector(layer_pattern=self.layer_pattern)._layer_of(name)

    def _layers(self, names: Sequence[str]) -> set[int]:
        return {i for i in (self._layer_of(n) for n in names) if i is not None}

    def _resolve_steps(self, pl_module: nn.Module, frozen: list[str]) -> list[dict[str, Any]]:
        frozen_set = set(frozen)
        steps: list[dict[str, Any]] = []
        if self.gradual_every is not None:
            by_layer: dict[int, list[str]] = {}
            below: list[str] = []  # before every layer (embeddings)
            current: Optional[int] = None
            for n in frozen:
                layer = self._layer_of(n)
                current = layer if layer is not None else current
                (by_layer.setdefault(current, []) if current is not None else below).append(n)
            if not by_layer:
                raise CallbackMisuse(f"Freezing.gradual_every: no layer index in the frozen parameters with "
                                     f"layer_pattern {self.layer_pattern!r}; set layer_pattern")
            groups = [by_layer[k] for k in sorted(by_layer, reverse=True)] + ([below] if below else [])
            return [{"epoch": self.gradual_start + k * self.gradual_every, "lr": None, "names": names}
                    for k, names in enumerate(groups)]
        for i, step in enumerate(self.unfreeze):
            sel = {k: v for k, v in step.items() if k not in _STEP_KEYS}
            if sel:
                what = f"Freezing.unfreeze[{i}]"
                picked = resolve(as_selector(sel, what), pl_module, what)
                names = [n for n in picked if n in frozen_set]
                if not names:
                    raise CallbackMisuse(f"{what} (epoch {step['epoch']}) selects no frozen parameter (it picked "
                                         f"{describe(picked)}); select frozen ones")
            else:
                names = list(frozen)
            steps.append({"epoch": step["epoch"], "lr": step.get("lr"), "names": names})
        return steps

    # ---- hooks --------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer, "Freezing")
        if not is_overridden("configure_model", pl_module):
            self._freeze(pl_module)
            return
        # A module that builds (or replaces) its layers in configure_model() has them only after this hook:
        # freeze right after that call, still before DDP wraps the model and configure_optimizers runs.
        built = pl_module.configure_model

        def configure_model_then_freeze() -> None:
            _unwrap(pl_module, configure_model_then_freeze)
            built()
            self._freeze(pl_module)

        pl_module.configure_model = configure_model_then_freeze  # type: ignore[method-assign]
        self._wrapper = configure_model_then_freeze

    def _freeze(self, pl_module: LightningModule) -> None:
        """Resolve the frozen set and the unfreeze steps on the module as built, and stop their gradients."""
        frozen = self.frozen_names(pl_module)
        self._steps = self._resolve_steps(pl_module, frozen)
        frozen_set = set(frozen)
        # decided before DDP wraps the model, so the wrapper registers the right parameters
        for n, p in pl_module.named_parameters():
            if n in frozen_set:
                p.requires_grad_(False)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._wrapper is not None:  # a fit that stopped before configure_model ran
            _unwrap(pl_module, self._wrapper)
            self._wrapper = None

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    @override
    def state_dict(self) -> dict[str, Any]:
        module = self._module
        trainable = [n for n, p in module.named_parameters() if p.requires_grad] if module is not None else []
        return {"trainable": trainable, "done": list(self._done), "added": [dict(a) for a in self._added]}

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._module = pl_module
        state, self._restored = self._restored, None
        pending = len(self._steps) > len(state.get("done", [])) if state else bool(self._steps)
        if pending:
            if self.optimizer_idx >= len(trainer.optimizers):
                raise CallbackMisuse(f"Freezing.optimizer_idx={self.optimizer_idx} but configure_optimizers returned "
                                     f"{len(trainer.optimizers)} optimizer(s)")
            optimizer = trainer.optimizers[self.optimizer_idx]
            for cfg in trainer.lr_scheduler_configs:
                if cfg.scheduler.optimizer is optimizer:
                    check_extendable(cfg.scheduler, "Freezing")
        if not state:
            return
        # The optimizer was just rebuilt from setup()'s frozen state, as in the original run; give it the groups
        # added since, in order, so the checkpoint's optimizer and scheduler state load onto the same layout.
        optimizer = trainer.optimizers[self.optimizer_idx]
        table = dict(pl_module.named_parameters())
        for rec in state.get("added", []):
            missing = [n for n in rec["names"] if n not in table]
            if missing:
                raise CallbackMisuse(f"Freezing: checkpoint names parameter(s) {describe(missing)} the module lacks; "
                                     "resume with the same model")
            self._add_group(trainer, optimizer, [table[n] for n in rec["names"]], rec["lr"])
        self._added = [dict(a) for a in state.get("added", [])]
        self._done = list(state.get("done", []))
        # Lightning-AI/pytorch-lightning#21901: restore requires_grad itself, not only group membership.
        trainable = set(state.get("trainable", []))
        for n, p in pl_module.named_parameters():
            p.requires_grad_(n in trainable)
        rewrap_ddp(trainer)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        due = [i for i, s in enumerate(self._steps) if s["epoch"] <= epoch and i not in self._done]
        if not due:
            return
        optimizer = trainer.optimizers[self.optimizer_idx]
        table = dict(pl_module.named_parameters())
        for i in due:
            step = self._steps[i]
            params = [table[n] for n in step["names"]]
            for p in params:
                p.requires_grad_(True)
            base = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
            lr = float(step["lr"]) if step["lr"] is not None else base * self.lr_ratio
            self._add_group(trainer, optimizer, params, lr)
            self._added.append({"step": i, "names": list(step["names"]), "lr": lr})
            self._done.append(i)
        rewrap_ddp(trainer)

    def _add_group(self, trainer: Trainer, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                   lr: Optional[float]) -> None:
        """New param group(s) at ``lr``: parameters already in a group move out of it with its hyper-parameters."""
        if not params or lr is None:
            return
        configs = [c for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        factor = lambda_factor(configs[0].scheduler) if configs else 1.0
        source = {id(p): group_index for group_index, g in enumerate(optimizer.param_groups) for p in g["params"]}
        by_source: dict[Optional[int], list[nn.Parameter]] = {}
        for p in params:
            by_source.setdefault(source.get(id(p)), []).append(p)
        for group_index, moved in by_source.items():
            hyper: dict[str, Any] = {}
            if group_index is not None:
                group, moving = optimizer.param_groups[group_index], {id(p) for p in moved}
                group["params"] = [q for q in group["params"] if id(q) not in moving]
                hyper = {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
            # other hyper-parameters of a parameter new to the optimizer come from its defaults
            optimizer.add_param_group({**hyper, "params": moved, "lr": lr * factor, "initial_lr": lr})
            for cfg in configs:
                extend_scheduler(cfg.scheduler, lr)

    def record_extra(self) -> dict[str, Any]:
        """What the run record stores about freezing (``petune fit`` collects it)."""
        return {"freezing": {"frozen_selectors": [s.describe() for s in self.freeze],  # type: ignore[union-attr]
                             "keep": [s.describe() for s in self.keep], "top_k": self.top_k,
                             "unfreeze": [{"epoch": s["epoch"], "params": len(s["names"])} for s in self._steps]}}


def _unwrap(pl_module: nn.Module, wrapper: Any) -> None:
    """Give the module its own ``configure_model`` back (only if ``wrapper`` still stands in for it)."""
    if pl_module.__dict__.get("configure_model") is wrapper:
        del pl_module.__dict__["configure_model"]


def _as_list(value: Any, arg: str) -> list[Any]:
    """A single selector or step (a mapping) as a one-item list; ``None`` as an empty one."""
    if value is None:
        return []
    if isinstance(value, (Mapping, ParamSelector)):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise CallbackMisuse(f"Freezing.{arg}={value!r} must be a list of selectors (mappings of ParamSelector fields)"
                             + (" or unfreeze steps" if arg == "unfreeze" else ""))
    return list(value)
