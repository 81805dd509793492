"""Mixout and Child-Tuning_D: EH-FT's remaining finetuning baselines, as callbacks.

- Mixout (Lee et al., ICLR 2020): during training each weight entry is swapped for its pretrained value with
  probability ``p`` and the result rescaled so its expectation is the current weight,
  ``W̃ = (M ⊙ W + (1 − M) ⊙ W₀ − p W₀) / (1 − p)`` with ``M ~ Bernoulli(1 − p)``; evaluation uses ``W``.
- Child-Tuning_D (Xu et al., EMNLP 2021): the Fisher information ``F = Σ_batches g²`` over one epoch of
  training batches picks the top ``reserve_p`` share of the masked parameters (the "child network"); every
  optimizer step only updates those, i.e. gradients outside the mask are zeroed.
"""

from __future__ import annotations

import math
import re
import types
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from pl_petune.callbacks._common import (
    CallbackMisuse,
    SelectorLike,
    as_selector,
    backbone_names,
    check_strategy,
    resolve,
    tensor_sha256,
)
from pl_petune.callbacks.selection import DEFAULT_LAYER_PATTERN
from torch import nn
from typing_extensions import override

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _mixout_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    p = self.mixout_p
    if self.training and p > 0:  # type: ignore[operator]
        target = self.mixout_target
        keep = torch.empty_like(weight).bernoulli_(1.0 - p)  # type: ignore[operator]
        weight = (keep * weight + (1.0 - keep) * target - p * target) / (1.0 - p)  # type: ignore[operator]
    return nn.functional.linear(x, weight, self.bias)


def disable_dropout(module: nn.Module) -> list[str]:
    """Turn every dropout of ``module`` off; returns what was changed.

    ``nn.Dropout`` modules get ``p = 0``; so do float attributes named ``*dropout*`` of a module or of its
    ``config`` (Hugging Face SDPA and flash attention read ``self.dropout_prob`` / ``config.attention_dropout``
    at forward time, not an ``nn.Dropout``).
    """
    changed: list[str] = []
    for name, mod in module.named_modules():
        if isinstance(mod, _DROPOUT_TYPES):
            if mod.p:
                changed.append(f"{name}.p")
            mod.p = 0.0
        holders = [(name, mod)]
        config = getattr(mod, "config", None)
        if config is not None and not isinstance(config, nn.Module) and hasattr(config, "__dict__"):
            holders.append((f"{name}.config" if name else "config", config))
        for where, obj in holders:
            for attr, value in list(vars(obj).items()):
                if "dropout" in attr.lower() and isinstance(value, float) and value:
                    setattr(obj, attr, 0.0)
                    changed.append(f"{where}.{attr}" if where else attr)
    return sorted(set(changed))


class Mixout(Callback):
    r"""Mixout regularisation towards the weights a module has before training (its pretrained weights).

    Every matching ``nn.Linear`` gets a non-persistent buffer ``mixout_target`` (``W₀``) and a forward that
    mixes its weight with it during training (biases are not mixed). Checkpoint keys do not change. The
    targets are taken after the module's ``setup()``/``configure_model()`` (a module may load its pretrained
    weights there): at fit start, or, on a resume, just before Lightning restores the checkpoint's weights.
    As in EH-FT's ``replace_layer_for_mixout``, ``p`` defaults to 0.7, the head's Linear layers are included,
    and dropout is turned off (``disable_dropout``: ``nn.Dropout`` modules and attention-dropout floats of
    Hugging Face models), since mixout replaces it.

    Args:
        p: mixout probability, in [0, 1).
        include: regexes over module names (``re.search``); default every Linear.
        exclude: regexes over module names to skip.
        disable_dropout: turn every dropout of the module off (Lee et al.'s recipe; see :func:`disable_dropout`).

    Raises:
        CallbackMisuse: ``p`` out of range or a bad regex (at construction), no Linear layer matched, or a
            resume from a run whose pretrained weights differ.
    """

    def __init__(self, p: float = 0.7, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 disable_dropout: bool = True) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise CallbackMisuse(f"Mixout.p={p!r} must be in [0, 1); EH-FT uses 0.7")
        for arg, patterns in (("include", include), ("exclude", exclude)):
            if isinstance(patterns, str):
                raise CallbackMisuse(f"Mixout.{arg}={patterns!r} must be a list of regexes; write [{patterns!r}]")
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise CallbackMisuse(f"Mixout.{arg}: bad regex {pattern!r}: {err}") from None
        self.p = float(p)
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.disable_dropout = disable_dropout
        self._layers: list[str] = []
        self._target_sha: Optional[str] = None
        self._dropout_off: list[str] = []
        self._hook: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(p=self.p, include=self.include, exclude=self.exclude)

    def _selected(self, pl_module: nn.Module) -> list[tuple[str, nn.Linear]]:
        out = []
        for name, mod in pl_module.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            if self.include and not any(re.search(p, name) for p in self.include):
                continue
            if any(re.search(p, name) for p in self.exclude):
                continue
            out.append((name, mod))
        return out

    def _install(self, pl_module: nn.Module) -> None:
        if self._layers:
            return
        layers = self._selected(pl_module)
        if not layers:
            raise CallbackMisuse(f"Mixout matched no nn.Linear (include={list(self.include)}, "
                                 f"exclude={list(self.exclude)}); widen include")
        for _, mod in layers:
            mod.register_buffer("mixout_target", mod.weight.detach().clone(), persistent=False)
            mod.mixout_p = self.p  # type: ignore[assignment]
            mod.forward = types.MethodType(_mixout_forward, mod)  # type: ignore[method-assign]
        self._layers = [n for n, _ in layers]
        self._target_sha = tensor_sha256({name: mod.mixout_target for name, mod in layers})
        if self.disable_dropout:
            self._dropout_off = disable_dropout(pl_module)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._layers:
            return
        check_strategy(trainer, "Mixout")
        # On a resume the first load_state_dict is Lightning restoring the checkpoint: take the targets just
        # before it overwrites the pretrained weights (after the module's setup and configure_model).
        self._hook = pl_module.register_load_state_dict_pre_hook(lambda module, *_: self._install(module))

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._install(pl_module)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"layers": list(self._layers), "target_sha256": self._target_sha}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("target_sha256") and self._target_sha and state_dict["target_sha256"] != self._target_sha:
            raise CallbackMisuse("Mixout: the module's weights before training differ from the run being resumed, so "
                                 "the mixout targets would change; build the module from the same pretrained weights")

    def record_extra(self) -> dict[str, Any]:
        return {"mixout": {"p": self.p, "layers": len(self._layers), "dropout_disabled": self.disable_dropout,
                           "dropout_turned_off": list(self._dropout_off)}}


class ChildTuningD(Callback):
    r"""Child-Tuning_D: update only the top ``reserve_p`` share of parameters by Fisher information.

    At the start of training (not again on resume: the mask is in the checkpoint, bit-packed), the Fisher
    information ``F_i = Σ g_i²`` of the masked parameters is summed over one epoch of training batches
    (``fisher_batches`` to cap it), each batch's gradient clipped first to norm ``max_grad_norm``: per
    parameter tensor by default, as EH-FT's reference calls ``clip_grad_norm_`` on each parameter
    (``clip_mode="per_tensor"``), or over all masked tensors together (``"joint"``); the mask keeps entries
    with ``F ≥`` the ``(1 − reserve_p)`` quantile over all masked parameters together. Before every optimizer
    step, gradients outside the mask are zeroed (with Adam
    moments starting at zero, masked entries then never move; weight decay still applies to all, as in
    ``ChildTuningAdamW``).

    Args:
        reserve_p: share of the masked parameters that train, in (0, 1]; EH-FT: 0.1.
        params: selector of the parameters the mask applies to (a ParamSelector or mapping of its fields);
            default the parameters with a layer index under ``backbone_attr`` (EH-FT masks
            ``transformer.layers.*``).
        fisher_batches: cap on the batches of the Fisher pass (default: one full epoch).
        max_grad_norm: per-batch gradient clipping in the Fisher pass (the reference's 1.0); ``None``: none.
        clip_mode: ``"per_tensor"`` (default; EH-FT's reference, the parity value) or ``"joint"`` (one norm
            over all masked tensors, ``clip_grad_norm_`` on the list).
        backbone_attr: attribute (dotted path) of the module holding the backbone, for the default ``params``
            (the same argument as HeadWarmStart's and Freezing's).
        loss_fn: ``fn(pl_module, batch, batch_idx) -> loss``; default ``pl_module.training_step`` with its
            logging muted.

    Raises:
        CallbackMisuse: ``reserve_p`` out of range, an empty selection, or a training step without a loss.
    """

    def __init__(self, reserve_p: float = 0.1, params: Optional[SelectorLike] = None,
                 fisher_batches: Optional[int] = None, max_grad_norm: Optional[float] = 1.0,
                 loss_fn: Optional[Callable[[LightningModule, Any, int], torch.Tensor]] = None,
                 clip_mode: Literal["per_tensor", "joint"] = "per_tensor", backbone_attr: str = "backbone") -> None:
        super().__init__()
        if isinstance(reserve_p, bool) or not isinstance(reserve_p, (int, float)) or not 0.0 < reserve_p <= 1.0:
            raise CallbackMisuse(f"ChildTuningD.reserve_p={reserve_p!r} must be in (0, 1]; EH-FT uses 0.1")
        if clip_mode not in ("per_tensor", "joint"):
            raise CallbackMisuse(f"ChildTuningD.clip_mode={clip_mode!r} is unknown; use 'per_tensor' (EH-FT) or "
                                 "'joint'")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise CallbackMisuse(f"ChildTuningD.max_grad_norm={max_grad_norm!r} must be > 0 or None (no clipping)")
        if fisher_batches is not None and fisher_batches < 1:
            raise CallbackMisuse(f"ChildTuningD.fisher_batches={fisher_batches!r} must be >= 1 or None (one epoch)")
        self.reserve_p = reserve_p
        self.params = as_selector(params, "ChildTuningD.params") if params is not None else None
        self.fisher_batches = fisher_batches
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn
        self.clip_mode = clip_mode
        self.backbone_attr = backbone_attr
        self._masks: dict[str, torch.Tensor] = {}
        self._stats: dict[str, Any] = {}

    @property
    @override
    def state_key(self) -> str:
        params = self.params.describe() if self.params is not None else f"layers of {self.backbone_attr}"
        return self._generate_state_key(reserve_p=self.reserve_p, params=params,
                                        clip=(self.clip_mode, self.max_grad_norm),
                                        fisher_batches=self.fisher_batches)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The boolean masks by parameter name (empty before training starts)."""
        return self._masks

    def _loss(self, pl_module: LightningModule, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(pl_module, batch, batch_idx)
        mute = lambda *a, **k: None  # noqa: E731  (training_step's self.log is not allowed here)
        pl_module.log, pl_module.log_dict = mute, mute  # type: ignore[method-assign]
        try:
            out = pl_module.training_step(batch, batch_idx)
        finally:
            del pl_module.log, pl_module.log_dict
        loss = out["loss"] if isinstance(out, dict) else out
        if not isinstance(loss, torch.Tensor):
            raise CallbackMisuse("ChildTuningD: training_step returned no loss tensor; pass loss_fn=")
        return loss

    def _names(self, pl_module: LightningModule) -> list[str]:
        if self.params is not None:
            return resolve(self.params, pl_module, "ChildTuningD.params")
        layer = re.compile(DEFAULT_LAYER_PATTERN)
        names = [n for n in backbone_names(pl_module, self.backbone_attr, "ChildTuningD") if layer.search(n)]
        if not names:
            raise CallbackMisuse(f"ChildTuningD: no parameter under {self.backbone_attr!r} has a layer index; set "
                                 "params= to the parameters to mask")
        return names

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer, "ChildTuningD")

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._names(pl_module)  # refuse an empty selection before any step (after the module's configure_model)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._masks:
            return
        table = dict(pl_module.named_parameters())
        names = [n for n in self._names(pl_module) if table[n].requires_grad]
        if not names:
            raise CallbackMisuse("ChildTuningD.params has no trainable parameter; the backbone must train (a type "
                                 "with 'all' in EH-FT's terms)")
        table = dict(pl_module.named_parameters())
        params = [table[n] for n in names]
        fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        was_training = pl_module.training
        pl_module.train()
        batches = 0
        for i, batch in enumerate(trainer.train_dataloader):  # type: ignore[arg-type]
            if self.fisher_batches is not None and i >= self.fisher_batches:
                break
            batch = trainer.strategy.batch_to_device(batch)
            loss = self._loss(pl_module, batch, i)
            # autograd.grad leaves .grad (and DDP's reducer hooks) untouched
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]  # type: ignore[assignment]
            if self.max_grad_norm is not None:
                # the coefficient of torch's clip_grad_norm_, per tensor (EH-FT) or over all tensors together
                norms = [torch.linalg.vector_norm(g) for g in grads]
                if self.clip_mode == "joint":
                    norms = [torch.linalg.vector_norm(torch.stack(norms))] * len(grads)
                grads = [g * min(1.0, self.max_grad_norm / (float(n) + 1e-6)) for g, n in zip(grads, norms)]  # type: ignore[assignment]
            for f, g in zip(fisher, grads):
                f += g.detach().float() ** 2
            batches += 1
        pl_module.train(was_training)
        if trainer.world_size > 1:
            fisher = [trainer.strategy.reduce(f, reduce_op="sum") for f in fisher]
        flat = torch.cat([f.flatten() for f in fisher])
        keep = max(1, math.ceil(self.reserve_p * flat.numel()))
        threshold = torch.topk(flat, keep, sorted=False).values.min()
        self._masks = {n: (f >= threshold) for n, f in zip(names, fisher)}
        self._stats = {"fisher_batches": batches, "masked_params": int(flat.numel()),
                       "kept": int(sum(int(m.sum()) for m in self._masks.values()))}

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        table = dict(pl_module.named_parameters())
        for name, mask in self._masks.items():
            p = table[name]
            if p.grad is not None:
                p.grad.mul_(mask.to(p.grad.device, p.grad.dtype))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: (pack_bits(m), tuple(m.shape)) for n, m in self._masks.items()},
                "stats": dict(self._stats)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._masks = {n: unpack_bits(bits, tuple(shape)) for n, (bits, shape) in state_dict.get("masks", {}).items()}
        self._stats = dict(state_dict.get("stats", {}))

    def record_extra(self) -> dict[str, Any]:
        params = self.params.describe() if self.params is not None else f"layers of {self.backbone_attr}"
        return {"child_tuning_d": {"reserve_p": self.reserve_p, "params": params, "clip_mode": self.clip_mode,
                                   "max_grad_norm": self.max_grad_norm, **self._stats}}


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, first element in the high bit (the layout of ``numpy.packbits``)."""
    flat = mask.detach().cpu().flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8) if flat.numel() else flat


def unpack_bits(bits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`pack_bits`."""
    flat = (bits.to(torch.uint8).view(-1, 1) & _BIT_WEIGHTS).ne(0).flatten()
    return flat[: math.prod(shape)].view(shape)


__all__ = ["Mixout", "ChildTuningD"]
