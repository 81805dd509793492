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
import types
from typing import Any, Callable, Optional, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from pl_petune.callbacks._common import CallbackMisuse, SelectorLike, as_selector, check_strategy, tensor_sha256


def _mixout_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    p = self.mixout_p
    if self.training and p > 0:
        target = self.mixout_target
        keep = torch.empty_like(weight).bernoulli_(1.0 - p)
        weight = (keep * weight + (1.0 - keep) * target - p * target) / (1.0 - p)
    return nn.functional.linear(x, weight, self.bias)


class Mixout(Callback):
    r"""Mixout regularisation towards the weights a module has at ``setup`` (its pretrained weights).

    Every matching ``nn.Linear`` gets a non-persistent buffer ``mixout_target`` (``W₀``) and a forward that
    mixes its weight with it during training (biases are not mixed). Checkpoint keys do not change. As in
    EH-FT's ``replace_layer_for_mixout``, ``p`` defaults to 0.7, the head's Linear layers are included, and
    dropout is turned off (``disable_dropout``), since mixout replaces it.

    Args:
        p: mixout probability, in [0, 1).
        include: regexes over module names (``re.search``); default every Linear.
        exclude: regexes over module names to skip.
        disable_dropout: set ``p = 0`` on every ``nn.Dropout`` of the module (Lee et al.'s recipe).

    Raises:
        CallbackMisuse: ``p`` out of range, or no Linear layer matched.
    """

    def __init__(self, p: float = 0.7, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 disable_dropout: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise CallbackMisuse(f"Mixout.p must be in [0, 1), got {p}; EH-FT uses 0.7")
        self.p = p
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.disable_dropout = disable_dropout
        self._layers: list[str] = []
        self._target_sha: Optional[str] = None
        self._loaded_sha: Optional[str] = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(p=self.p, include=self.include, exclude=self.exclude)

    def _selected(self, pl_module: nn.Module) -> list[tuple[str, nn.Linear]]:
        import re

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

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._layers:
            return
        check_strategy(trainer, "Mixout")
        layers = self._selected(pl_module)
        if not layers:
            raise CallbackMisuse(f"Mixout matched no nn.Linear (include={list(self.include)}, "
                                 f"exclude={list(self.exclude)}); widen include")
        for name, mod in layers:
            # setup runs before a checkpoint is restored: this is the weight as constructed (pretrained)
            mod.register_buffer("mixout_target", mod.weight.detach().clone(), persistent=False)
            mod.mixout_p = self.p
            mod.forward = types.MethodType(_mixout_forward, mod)
        self._layers = [n for n, _ in layers]
        self._target_sha = tensor_sha256({name: mod.mixout_target for name, mod in layers})
        if self.disable_dropout:
            for mod in pl_module.modules():
                if isinstance(mod, nn.Dropout):
                    mod.p = 0.0

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"layers": list(self._layers), "target_sha256": self._target_sha}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("target_sha256") and self._target_sha and state_dict["target_sha256"] != self._target_sha:
            raise CallbackMisuse("Mixout: the module's weights at setup differ from the run being resumed, so the "
                                 "mixout targets would change; build the module from the same pretrained weights")

    def record_extra(self) -> dict[str, Any]:
        return {"mixout": {"p": self.p, "layers": len(self._layers), "dropout_disabled": self.disable_dropout}}


class ChildTuningD(Callback):
    r"""Child-Tuning_D: update only the top ``reserve_p`` share of parameters by Fisher information.

    At the start of training (not again on resume: the mask is in the checkpoint, bit-packed), the Fisher
    information ``F_i = Σ g_i²`` of the masked parameters is summed over one epoch of training batches
    (``fisher_batches`` to cap it), each batch's gradient clipped to norm ``max_grad_norm`` first (as the
    reference does); the mask keeps entries with ``F ≥`` the ``(1 − reserve_p)`` quantile over all masked
    parameters together. Before every optimizer step, gradients outside the mask are zeroed (with Adam
    moments starting at zero, masked entries then never move; weight decay still applies to all, as in
    ``ChildTuningAdamW``).

    Args:
        reserve_p: share of the masked parameters that train, in (0, 1]; EH-FT: 0.1.
        params: selector of the parameters the mask applies to (a ParamSelector or mapping of its fields);
            default the backbone's transformer layers (EH-FT masks ``transformer.layers.*``).
        fisher_batches: cap on the batches of the Fisher pass (default: one full epoch).
        max_grad_norm: per-batch gradient clipping in the Fisher pass (the reference's 1.0).
        loss_fn: ``fn(pl_module, batch, batch_idx) -> loss``; default ``pl_module.training_step`` with its
            logging muted.

    Raises:
        CallbackMisuse: ``reserve_p`` out of range, an empty selection, or a training step without a loss.
    """

    def __init__(self, reserve_p: float = 0.1, params: Optional[SelectorLike] = None,
                 fisher_batches: Optional[int] = None, max_grad_norm: Optional[float] = 1.0,
                 loss_fn: Optional[Callable[[LightningModule, Any, int], torch.Tensor]] = None) -> None:
        super().__init__()
        if not 0.0 < reserve_p <= 1.0:
            raise CallbackMisuse(f"ChildTuningD.reserve_p must be in (0, 1], got {reserve_p}; EH-FT uses 0.1")
        self.reserve_p = reserve_p
        default = {"include": [r"^backbone\.(?:.*\.)?(?:layer|layers|block|h)\.\d+\."]}
        self.params = as_selector(params if params is not None else default, "ChildTuningD.params")
        self.fisher_batches = fisher_batches
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn
        self._masks: dict[str, torch.Tensor] = {}
        self._stats: dict[str, Any] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(reserve_p=self.reserve_p, params=self.params.describe())

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

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer, "ChildTuningD")
            self.params.resolve(pl_module)  # refuse an empty selection before training

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._masks:
            return
        names = [n for n in self.params.resolve(pl_module) if dict(pl_module.named_parameters())[n].requires_grad]
        if not names:
            raise CallbackMisuse(f"ChildTuningD: selection {self.params.describe()} has no trainable parameter; the "
                                 "backbone must train (a type with 'all' in EH-FT's terms)")
        table = dict(pl_module.named_parameters())
        params = [table[n] for n in names]
        fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        was_training = pl_module.training
        pl_module.train()
        batches = 0
        for i, batch in enumerate(trainer.train_dataloader):
            if self.fisher_batches is not None and i >= self.fisher_batches:
                break
            batch = trainer.strategy.batch_to_device(batch)
            loss = self._loss(pl_module, batch, i)
            # autograd.grad leaves .grad (and DDP's reducer hooks) untouched
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
            if self.max_grad_norm is not None:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                scale = min(1.0, self.max_grad_norm / (float(norm) + 1e-6))
                grads = [g * scale for g in grads]
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
        import numpy as np

        packed = {n: (torch.from_numpy(np.packbits(m.cpu().numpy().ravel())), tuple(m.shape))
                  for n, m in self._masks.items()}
        return {"masks": packed, "stats": dict(self._stats)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import numpy as np

        masks = {}
        for n, (bits, shape) in state_dict.get("masks", {}).items():
            numel = math.prod(shape)
            flat = np.unpackbits(bits.numpy())[:numel].astype(bool)
            masks[n] = torch.from_numpy(flat).view(shape)
        self._masks = masks
        self._stats = dict(state_dict.get("stats", {}))

    def record_extra(self) -> dict[str, Any]:
        return {"child_tuning_d": {"reserve_p": self.reserve_p, "params": self.params.describe(), **self._stats}}


__all__ = ["Mixout", "ChildTuningD"]
