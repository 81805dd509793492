"""Child-Tuning_D (Xu et al., EMNLP 2021), one of EH-FT's finetuning baselines, as a callback.

The Fisher information ``F = Σ_batches g²`` over one epoch of training batches picks the top ``reserve_p``
share of the masked parameters (the "child network"); every optimizer step only updates those, i.e.
gradients outside the mask are zeroed.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from pl_petune.callbacks._common import (
    CallbackMisuse,
    SelectorLike,
    as_selector,
    backbone_names,
    check_strategy,
    resolve,
)
from pl_petune.callbacks.selection import DEFAULT_LAYER_PATTERN
from typing_extensions import override


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
            grads = [grad if grad is not None else torch.zeros_like(p) for grad, p in zip(grads, params)]  # type: ignore[assignment]
            if self.max_grad_norm is not None:
                # the coefficient of torch's clip_grad_norm_, per tensor (EH-FT) or over all tensors together
                norms = [torch.linalg.vector_norm(grad) for grad in grads]
                if self.clip_mode == "joint":
                    norms = [torch.linalg.vector_norm(torch.stack(norms))] * len(grads)
                grads = [grad * min(1.0, self.max_grad_norm / (float(n) + 1e-6)) for grad, n in zip(grads, norms)]  # type: ignore[assignment]
            for f, grad in zip(fisher, grads):
                f += grad.detach().float() ** 2
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


__all__ = ["ChildTuningD", "pack_bits", "unpack_bits"]
