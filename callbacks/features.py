"""SaveHeadFeatures: keep the features that enter the classification head, for EH-FT's Figure 4 view.

EH-FT (Yang et al., EMNLP 2022, Figure 4) argues from a t-SNE of the head's inputs that a head warmed up by
parameter-efficient tuning meets better-separated features than a random one. This callback records those
inputs: after a test pass (``petune fit`` runs one, with the best checkpoint) it runs the module over the
train and dev dataloaders in eval mode and saves, per split, exactly what the head received (a forward
pre-hook on the head, so no second code path computes "features") with the batch labels, to
``<default_root_dir>/features.npz``. ``petune features plot`` draws the panels.

Depends on lightning and torch (and numpy, which lightning itself imports).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from pl_petune.callbacks._common import CallbackMisuse, get_submodule
from pl_petune.callbacks._inference import infer
from typing_extensions import override

SPLITS = ("train", "dev")


def capture_head_inputs(module: torch.nn.Module, head: torch.nn.Module, batches: Iterable[Any],
                        label_key: str = "labels", limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``module`` over ``batches`` (eval, no grad) and return what ``head`` received, with the batch labels.

    Args:
        module: the model; called as ``module(**batch_without_labels)`` (dict batches) or ``module(batch[0])``.
        head: a submodule of ``module`` whose first positional input is recorded.
        batches: batches holding labels (``label_key`` of a dict, or the second item of a tuple).
        label_key: the labels' key, removed before the call.
        limit: stop after this many examples (``None``: all).

    Returns:
        ``(features, labels)``: float32 ``(n, hidden)`` and ``(n,)``. For multiple-choice inputs the head sees
        ``choices`` rows per example; the rows are kept as the head saw them (``n * choices`` rows).
    """
    got = infer(module, batches, capture=head, label_key=label_key, keep_outputs=False, limit=limit)
    if got.features is None:
        raise CallbackMisuse("SaveHeadFeatures.head_attr: the head was never called; point head_attr at the module "
                             "that reads the features")
    if got.labels is None:
        raise CallbackMisuse(f"SaveHeadFeatures: the batches have no labels ({label_key!r} of a dict batch, or the "
                             "second item of a tuple)")
    return got.features.numpy().astype(np.float32), got.labels.numpy()


class SaveHeadFeatures(Callback):
    """Save the classification head's inputs on train and dev after the test pass (best weights).

    The file is written atomically (a temp file in the same folder, fsync, rename) by rank 0.

    Args:
        splits: which dataloaders to read: ``train`` (the datamodule's ``train_dataloader``, else the loader
            of the fit that ran before in this Trainer) and/or ``dev`` (``val_dataloader``, likewise). The
            held-out test split is never read here.
        head_attr: attribute (dotted path) of the LightningModule holding the head (a ``torch.nn.Module``).
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
        self._fitted: dict[str, Any] = {}  # the loaders of a fit in this Trainer, when there is no datamodule

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(splits=self.splits, head_attr=self.head_attr, filename=self.filename)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        get_submodule(pl_module, self.head_attr, "classification head", "SaveHeadFeatures.head_attr")
        if stage == "test" and not self._loaders(trainer):
            raise CallbackMisuse("SaveHeadFeatures reads the train and dev loaders after the test pass, but this "
                                 "Trainer has neither a LightningDataModule nor a finished fit; test with the "
                                 "datamodule, or with the Trainer that ran fit")

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitted = {"train": trainer.train_dataloader, "dev": trainer.val_dataloaders}

    def _loaders(self, trainer: Trainer) -> dict[str, Callable[[], Any]]:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if dm is not None:
            return {"train": dm.train_dataloader, "dev": dm.val_dataloader}
        return {k: (lambda v=v: v) for k, v in self._fitted.items() if v is not None}  # type: ignore[misc]

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = self._loaders(trainer)
        missing = [s for s in self.splits if s not in loaders]
        if missing:
            raise CallbackMisuse(f"SaveHeadFeatures.splits: no {'/'.join(missing)} loader to read; give a "
                                 "datamodule or drop it from splits")
        head = get_submodule(pl_module, self.head_attr, "classification head", "SaveHeadFeatures.head_attr")
        arrays: dict[str, np.ndarray] = {}
        for split in self.splits:
            feats, labels = capture_head_inputs(pl_module, head, loaders[split](), limit=self.limit)
            arrays[f"{split}_features"], arrays[f"{split}_labels"] = feats, labels
        if trainer.is_global_zero:
            folder = Path(self.dirpath or trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path, staging = folder / self.filename, folder / f".{self.filename}.tmp"
            with open(staging, "wb") as fh:
                np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(staging, path)
            self._path = path

    def record_extra(self) -> dict[str, Any]:
        """The saved file, for the run record (``extra.head_features``)."""
        return {"head_features": str(self._path)} if self._path is not None else {}
