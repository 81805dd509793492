"""Parameter selection: name patterns and module types resolved to an explicit list of parameter names.

One mechanism for every selection-based method (BitFit, LayerNorm tuning, FFN/MHA-only, Top-K, random
subsets, head-only) and for the freezing callback. It depends on torch only, so other projects can use it.

Example:
    >>> sel = ParamSelector(module_types=("LayerNorm",), include=(r"^backbone\\.encoder\\.",))
    >>> names = sel.resolve(model)          # the encoder's LayerNorm weights and biases, by name
    >>> set_trainable(model, names)         # exactly those train; everything else is frozen
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from pl_petune.callbacks._errors import CallbackMisuse
from torch import nn

# The layer index in HF encoder parameter names: "encoder.layer.3.", "layers.3.", "block.3.", "h.3."
DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layer|layers|block|h)\.(\d+)\."


class SelectionError(CallbackMisuse):
    """A selection that cannot be resolved (bad pattern, nothing matched, unknown module type).

    A :class:`CallbackMisuse`, so one ``except`` catches every misuse; the callbacks re-raise it with their own
    name and argument in front.
    """


def _type_matches(mod: nn.Module, types: Sequence[type | str]) -> bool:
    for t in types:
        if isinstance(t, str):
            if any(c.__name__ == t for c in type(mod).__mro__):
                return True
        elif isinstance(mod, t):
            return True
    return False


@dataclass
class ParamSelector:
    """Which parameters to select.

    A parameter is selected when it matches ``include`` (any regex, ``re.search`` on its full name) or is a
    direct parameter of a module of one of ``module_types`` (a class or a class name such as
    ``"LayerNorm"``); when neither is given, every parameter matches. It is then kept only if it is a bias
    (``bias_only``), lies in one of ``layers`` (index found by ``layer_pattern``), and matches no
    ``exclude`` regex.

    Args:
        include: regexes over parameter names.
        module_types: module classes or class names whose own parameters match.
        exclude: regexes that remove parameters.
        bias_only: keep only parameters whose name ends in ``bias``.
        layers: keep only parameters of these layer indices (negative indices count from the top).
        layer_pattern: regex with one group capturing the layer index in a parameter name.
        allow_empty: return an empty selection instead of raising.
    """

    include: Sequence[str] = ()
    module_types: Sequence[type | str] = ()
    exclude: Sequence[str] = ()
    bias_only: bool = False
    layers: Optional[Sequence[int]] = None
    layer_pattern: str = DEFAULT_LAYER_PATTERN
    allow_empty: bool = False
    _compiled: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # refuse a bad regex or module type when the selector is built, not when it first resolves
        for key in ("include", "exclude", "module_types"):
            if isinstance(getattr(self, key), (str, type)):
                raise SelectionError(f"{key} must be a list, got the single value {getattr(self, key)!r}; "
                                     f"write [{getattr(self, key)!r}]")
        for pattern in (*self.include, *self.exclude):
            self._re(pattern)
        if self._re(self.layer_pattern).groups != 1:
            raise SelectionError(f"layer_pattern {self.layer_pattern!r} must have exactly one group capturing the "
                                 "layer index, e.g. r'(?:^|\\.)layer\\.(\\d+)\\.'")
        bad = [t for t in self.module_types if not isinstance(t, (str, type))]
        if bad:
            raise SelectionError(f"module_types {bad!r} must be classes or class names such as 'LayerNorm'")

    def _re(self, pattern: str) -> re.Pattern:
        if pattern not in self._compiled:
            try:
                self._compiled[pattern] = re.compile(pattern)
            except re.error as err:
                raise SelectionError(f"bad parameter pattern {pattern!r}: {err}") from None
        return self._compiled[pattern]

    def resolve(self, module: nn.Module) -> list[str]:
        """Names (``named_parameters()`` order) of the selected parameters of ``module``."""
        by_type: set[str] = set()
        if self.module_types:
            for mod_name, mod in module.named_modules():
                if _type_matches(mod, self.module_types):
                    for p_name, _ in mod.named_parameters(recurse=False):
                        by_type.add(f"{mod_name}.{p_name}" if mod_name else p_name)
        names = [n for n, _ in module.named_parameters()]
        layer_ids = self._layer_ids(names)
        out = []
        for n in names:
            if self.include or self.module_types:
                if not (n in by_type or any(self._re(p).search(n) for p in self.include)):
                    continue
            if self.bias_only and not n.endswith("bias"):
                continue
            if layer_ids is not None and self._layer_of(n) not in layer_ids:
                continue
            if any(self._re(p).search(n) for p in self.exclude):
                continue
            out.append(n)
        if not out and not self.allow_empty:
            raise SelectionError(f"selection {self.describe()} matched no parameter; example names: "
                                 + ", ".join(names[:4]))
        return out

    def _layer_of(self, name: str) -> Optional[int]:
        m = self._re(self.layer_pattern).search(name)
        return int(m.group(1)) if m else None

    def _layer_ids(self, names: Iterable[str]) -> Optional[set[int]]:
        if self.layers is None:
            return None
        present = sorted({i for i in (self._layer_of(n) for n in names) if i is not None})
        if not present:
            raise SelectionError(f"no layer index found with pattern {self.layer_pattern!r}")
        n_layers = present[-1] + 1
        out = set()
        for i in self.layers:
            j = i + n_layers if i < 0 else i
            if not 0 <= j < n_layers:
                raise SelectionError(f"layer {i} out of range; the model has layers 0..{n_layers - 1}")
            out.add(j)
        return out

    def describe(self) -> str:
        parts = []
        for key in ("include", "module_types", "exclude", "bias_only", "layers"):
            value = getattr(self, key)
            if value:
                shown = [getattr(v, '__name__', v) for v in value] if isinstance(value, (list, tuple)) else value
                parts.append(f"{key}={shown}")
        return "(" + ", ".join(parts) + ")" if parts else "(all parameters)"


def set_trainable(module: nn.Module, names: Iterable[str]) -> None:
    """Make exactly ``names`` trainable (``requires_grad``) and freeze every other parameter."""
    names = set(names)
    known = {n for n, _ in module.named_parameters()}
    missing = sorted(names - known)
    if missing:
        raise SelectionError(f"parameter(s) {missing[:3]} not found in {type(module).__name__}")
    for n, p in module.named_parameters():
        p.requires_grad_(n in names)


def params_by_name(module: nn.Module, names: Iterable[str]) -> list[torch.nn.Parameter]:
    """Parameter objects for ``names`` (identity, not value: safe for zero-initialised tensors)."""
    table = dict(module.named_parameters())
    return [table[n] for n in names]


def count(module: nn.Module, names: Iterable[str]) -> int:
    table = dict(module.named_parameters())
    return sum(table[n].numel() for n in names)
