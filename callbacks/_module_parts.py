"""Where HeadWarmStart finds a module's backbone, head and PET parameters, and follows them through the PET drop.

The contract a module offers (``backbone``/``head`` attributes at dotted paths, an optional
``pet_parameter_names()`` and ``drop_pet_layers()``) is read here, so HeadWarmStart itself only plans and
switches stages. Private to ``pl_petune.callbacks``; depends on lightning and torch only.
"""

from __future__ import annotations

from typing import Any, Optional

from pl_petune.callbacks._common import CallbackMisuse, describe, get_submodule
from torch import nn


class ModuleParts:
    """A module's backbone, head and PET parameters, as HeadWarmStart's arguments name them.

    Args:
        names: the callback whose ``backbone_attr``, ``head_attr`` (dotted paths of the module's backbone and
            head), ``pet_names_fn`` and ``drop_pet_fn`` (names of the module methods listing and removing PET
            layers) are read, at each use, so they stay the callback's public attributes.
    """

    def __init__(self, names: Any) -> None:
        self._names = names
        self._after_drop: Optional[tuple[nn.Module, nn.Module]] = None

    @property
    def backbone_attr(self) -> str:
        return self._names.backbone_attr

    @property
    def head_attr(self) -> str:
        return self._names.head_attr

    @property
    def pet_names_fn(self) -> str:
        return self._names.pet_names_fn

    @property
    def drop_pet_fn(self) -> str:
        return self._names.drop_pet_fn

    @property
    def dropped(self) -> bool:
        """Whether the PET layers were dropped (the module now holds a stage-2 tree)."""
        return self._after_drop is not None

    def backbone_and_head(self, pl_module: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The backbone and head modules: at their attributes, or where the PET drop left them."""
        if self._after_drop is not None:
            return self._after_drop
        return (get_submodule(pl_module, self.backbone_attr, "backbone", "HeadWarmStart.backbone_attr"),
                get_submodule(pl_module, self.head_attr, "head", "HeadWarmStart.head_attr"))

    def pet_names(self, pl_module: nn.Module) -> list[str]:
        """Full names of the module's PET parameters (none when it has no ``pet_names_fn``)."""
        fn = getattr(pl_module, self.pet_names_fn, None)
        if not callable(fn):
            return []
        names = list(fn())
        unknown = [n for n in names if n not in dict(pl_module.named_parameters())]
        if unknown:
            raise CallbackMisuse(f"HeadWarmStart.pet_names_fn: {type(pl_module).__name__}.{self.pet_names_fn}() "
                                 f"returned {describe(unknown)}, not names in named_parameters(); return full names")
        return names

    def can_drop(self, pl_module: nn.Module) -> bool:
        """Whether the module has a ``drop_pet_fn`` to call."""
        return callable(getattr(pl_module, self.drop_pet_fn, None))

    def drop(self, pl_module: nn.Module) -> None:
        """Drop the PET layers and follow backbone and head to wherever the drop left them."""
        backbone, head = self.backbone_and_head(pl_module)
        before = {"backbone": [id(p) for p in backbone.parameters()], "head": [id(p) for p in head.parameters()]}
        getattr(pl_module, self.drop_pet_fn)()
        alive = {id(p) for p in pl_module.parameters()}
        backbone = follow(pl_module, backbone, {i for i in before["backbone"] if i in alive}, self.backbone_attr,
                          "backbone", self.drop_pet_fn)
        head = follow(pl_module, head, {i for i in before["head"] if i in alive}, self.head_attr, "head",
                      self.drop_pet_fn)
        self._after_drop = (backbone, head)


def follow(pl_module: nn.Module, old: nn.Module, alive: set[int], attr: str, role: str, drop_fn: str) -> nn.Module:
    """Where the ``role`` module is after the PET drop: the same object, else the module at ``attr`` (holding the
    surviving tensors ``alive``), else the smallest module holding all of ``alive`` (PEFT's unload replaces a
    ``modules_to_save`` wrapper by its trained copy)."""
    modules = [m for _, m in pl_module.named_modules()]
    if any(m is old for m in modules):
        return old
    try:
        at_path = get_submodule(pl_module, attr, role, "")
    except CallbackMisuse:
        at_path = None
    if at_path is not None and alive <= {id(p) for p in at_path.parameters()}:
        return at_path
    holders = [m for m in modules if alive and alive <= {id(p) for p in m.parameters()}]
    if not holders:
        raise CallbackMisuse(f"HeadWarmStart: after {drop_fn}() the {role} is gone: neither its module, nor a module "
                             f"at {attr!r}, nor one holding its tensors is in the LightningModule; {drop_fn}() must "
                             f"keep the {role}'s tensors (PEFT: self.model = self.model.unload())")
    return min(holders, key=lambda m: sum(1 for _ in m.parameters()))


__all__ = ["ModuleParts", "follow"]
