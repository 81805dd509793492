"""Mixout (Lee et al., ICLR 2020), one of EH-FT's finetuning baselines, as a callback.

During training each weight entry is swapped for its pretrained value with probability ``p`` and the result
rescaled so its expectation is the current weight, ``W̃ = (B ⊙ W + (1 − B) ⊙ W₀ − p W₀) / (1 − p)`` with
``B ~ Bernoulli(1 − p)``; evaluation uses ``W``.
"""

from __future__ import annotations

import re
import types
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from pl_petune.callbacks._common import CallbackMisuse, check_strategy, tensor_sha256
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
        for where, holder in holders:
            for attr, value in list(vars(holder).items()):
                if "dropout" in attr.lower() and isinstance(value, float) and value:
                    setattr(holder, attr, 0.0)
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


__all__ = ["Mixout", "disable_dropout"]
