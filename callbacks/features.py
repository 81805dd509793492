"""SaveHeadFeatures: keep the features that enter the classification head, for EH-FT's Figure 4 view.

EH-FT (Yang et al., EMNLP 2022, Figure 4) argues from a t-SNE of the head's inputs that a head warmed up by
parameter-efficient tuning meets better-separated features than a random one. This callback records those
inputs: after a test pass (``petune fit`` runs one, with the best checkpoint) it runs the module over the
train and dev dataloaders in eval mode and saves, per split, exactly what the head received (a forward
pre-hook on the head, so no second code path computes "features") with the batch labels, to
``<default_root_dir>/features.npz``. ``petune features plot`` draws the panels.

Depends on lightning, torch and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from pl_petune.callbacks._common import CallbackMisuse

SPLITS = ("train", "dev")


def capture_head_inputs(module: torch.nn.Module, head: torch.nn.Module, batches: Iterable[dict[str, Any]],
                        label_key: str = "labels", limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``module`` over ``batches`` (no grad) and return what ``head`` received, with the batch labels.

    Args:
        module: the model; called as ``module(**batch_without_labels)``.
        head: a submodule of ``module`` whose first positional input is recorded.
        batches: dict batches (tensors), each holding ``label_key``.
        label_key: the labels' key, removed before the call.
        limit: stop after this many examples (``None``: all).

    Returns:
        ``(features, labels)``: float32 ``(n, hidden)`` and ``(n,)``. For multiple-choice inputs the head sees
        ``choices`` rows per example; the rows are kept as the head saw them (``n * choices`` rows).
    """
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float().cpu()))
    labels: list[torch.Tensor] = []
    device = next(module.parameters()).device
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
                          if k != label_key}
                module(**inputs)
                labels.append(batch[label_key].detach().cpu())
                count += len(batch[label_key])
                if limit is not None and count >= limit:
                    break
    finally:
        handle.remove()
    if not seen:
        raise CallbackMisuse("the head was never called; is `head_attr` the module that reads the features?")
    feats, labs = torch.cat(seen).numpy(), torch.cat(labels).numpy()
    if limit is not None and len(feats) == len(labs):
        feats, labs = feats[:limit], labs[:limit]
    return feats.astype(np.float32), labs


class SaveHeadFeatures(Callback):
    """Save the classification head's inputs on train and dev after the test pass (best weights).

    Args:
        splits: which dataloaders to read: ``train`` (the datamodule's ``train_dataloader``) and/or ``dev``
            (``val_dataloader``). The held-out test split is never read here.
        head_attr: attribute of the LightningModule holding the head (a ``torch.nn.Module``).
        limit: at most this many examples per split (t-SNE on a few thousand points is enough).
        filename: the ``.npz`` file, written in ``dirpath`` (default: the trainer's ``default_root_dir``,
            which ``petune fit`` sets to the run folder).
        dirpath: folder of ``filename``.

    Example:
        ``trainer.callbacks: [{class_path: pl_petune.callbacks.features.SaveHeadFeatures}]``; the file holds
        ``<split>_features`` (n × hidden, float32) and ``<split>_labels`` for each split.
    """

    def __init__(self, splits: Sequence[str] = SPLITS, head_attr: str = "head", limit: Optional[int] = 2000,
                 filename: str = "features.npz", dirpath: Optional[str] = None) -> None:
        bad = [s for s in splits if s not in SPLITS]
        if bad or not splits:
            raise CallbackMisuse(f"SaveHeadFeatures.splits {list(splits)!r} is invalid; choose from: "
                                 f"{', '.join(SPLITS)}")
        if limit is not None and limit < 1:
            raise CallbackMisuse(f"SaveHeadFeatures.limit {limit!r} must be a positive number of examples or None")
        if not filename.endswith(".npz"):
            raise CallbackMisuse(f"SaveHeadFeatures.filename {filename!r} must end in .npz")
        self.splits = tuple(splits)
        self.head_attr = head_attr
        self.limit = limit
        self.filename = filename
        self.dirpath = dirpath
        self._path: Optional[Path] = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(splits=self.splits, head_attr=self.head_attr, filename=self.filename)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        head = getattr(pl_module, self.head_attr, None)
        if not isinstance(head, torch.nn.Module):
            raise CallbackMisuse(f"SaveHeadFeatures: {type(pl_module).__name__}.{self.head_attr} is not a module; "
                                 "set head_attr to the attribute holding the classification head")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.datamodule is None:
            raise CallbackMisuse("SaveHeadFeatures needs a LightningDataModule (it reads its train/val loaders)")
        loaders: dict[str, Callable[[], Any]] = {"train": trainer.datamodule.train_dataloader,
                                                 "dev": trainer.datamodule.val_dataloader}
        head = getattr(pl_module, self.head_attr)
        arrays: dict[str, np.ndarray] = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            for split in self.splits:
                feats, labels = capture_head_inputs(pl_module, head, loaders[split](), limit=self.limit)
                arrays[f"{split}_features"], arrays[f"{split}_labels"] = feats, labels
        finally:
            pl_module.train(was_training)
        if trainer.is_global_zero:
            folder = Path(self.dirpath or trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self._path = folder / self.filename
            np.savez_compressed(self._path, **arrays)

    def record_extra(self) -> dict[str, Any]:
        """The saved file, for the run record (``extra.head_features``)."""
        return {"head_features": str(self._path)} if self._path is not None else {}
