"""DevSplitEarlyStopping: early stopping on a development split, the best weights restored, one test pass.

The fair protocol of "Revisiting Parameter-Efficient Tuning" (EMNLP 2022) as one drop-in callback: model
selection and early stopping see only the development split (given, or carved from train), the held-out
test split is evaluated once, after fit, with the best-on-dev weights; asking for it earlier is an error.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from pl_petune.callbacks._common import CallbackMisuse, check_strategy, file_sha256
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)
from typing_extensions import override


class HeldOutTooEarly(CallbackMisuse, RuntimeError):
    """A test evaluation was asked for before fit ended (or a second time) under a non-leaky protocol."""


class DevSplitEarlyStopping(EarlyStopping):
    r"""Early stopping on the development split, best weights restored at the end, the test split read once.

    Args:
        monitor: the development metric, as logged (e.g. ``"val_loss"``, ``"dev/loss"``); required, as in
            Lightning's ``EarlyStopping``: selection on an unnamed metric would be a silent choice.
        mode: ``"min"`` or ``"max"``.
        patience: validation checks without improvement before stopping (one check per epoch by default).
        min_delta: minimum change that counts as an improvement.
        dev_fraction: when fit has no validation dataloader, carve this share of the training set (seeded
            shuffle, ``carve_seed``) as the development split; ``None`` requires a given one. The train loader
            keeps everything but its dataset (a ``Subset``): batch size or batch sampler, shuffling and its
            generator, collate_fn, workers, pin_memory, worker_init_fn, persistent_workers, ...; a loader it
            cannot carve that way (an iterable dataset, a custom sampler or batch sampler, a DataLoader
            subclass) is refused.
        carve_seed: seed of the carve.
        dirpath: folder of the best checkpoint (default ``<trainer.log_dir>/dev_best``, i.e. the logger's version
            folder, or ``default_root_dir`` without a logger); the file is ``<monitor>-<mode>-<run token>.ckpt``,
            so two runs (or two instances) never share one; written atomically (temp file, fsync, rename).
        leaky: the protocol reports on the split it selects on (e.g. PETuning's original); then testing is
            allowed at any time and any number of times, and the run is marked leaky in the record.
        **kwargs: other :class:`~lightning.pytorch.callbacks.EarlyStopping` arguments.

    Raises:
        CallbackMisuse: the monitor is never logged, no development split and no ``dev_fraction``,
            ``dev_fraction`` outside (0, 1).
        HeldOutTooEarly: ``trainer.test`` before fit ended, or a second time (non-leaky protocol).

    Example:
        >>> stop = DevSplitEarlyStopping(monitor="val_loss", patience=10, dev_fraction=0.1)
        >>> trainer = Trainer(callbacks=[stop]); trainer.fit(model, train_loader)
        >>> stop.test_best(trainer, model, dataloaders=test_loader)
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 10, min_delta: float = 0.0,
                 dev_fraction: Optional[float] = None, carve_seed: int = 0, dirpath: Optional[str] = None,
                 leaky: bool = False, **kwargs: Any) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta, **kwargs)
        if dev_fraction is not None and not 0.0 < dev_fraction < 1.0:
            raise CallbackMisuse(f"DevSplitEarlyStopping.dev_fraction={dev_fraction} is out of range; give a share "
                                 "of the training set in (0, 1), e.g. 0.1")
        self.dev_fraction = dev_fraction
        self.carve_seed = carve_seed
        self.dirpath = dirpath
        self.leaky = leaky
        self.best_model_path = ""
        self.best_epoch: Optional[int] = None
        self._token: Optional[str] = None  # names this run's best checkpoint; kept across a resume
        self._fit_done = False
        self._tested = False
        self._carved: Optional[dict[str, int]] = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, dev=True)

    # ---- the development split ----------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "test":
            self._guard_test()
            return
        if stage != "fit":
            return
        super().setup(trainer, pl_module, stage)
        check_strategy(trainer, "DevSplitEarlyStopping")
        self._fit_done = False
        if self._token is None:
            self._token = trainer.strategy.broadcast(uuid.uuid4().hex[:8], src=0)
        val_source = trainer.fit_loop.epoch_loop.val_loop._data_source
        if val_source.is_defined() and (val_source.instance is not None):
            return
        if self.dev_fraction is None:
            raise CallbackMisuse("DevSplitEarlyStopping: fit has no development split; pass val_dataloaders (or "
                                 "define val_dataloader()), or set dev_fraction=0.1 to carve one from train")
        self._carve(trainer)

    def _carve(self, trainer: Trainer) -> None:
        from lightning.pytorch.trainer.connectors.data_connector import (
            _DataLoaderSource,
        )

        loader = trainer.fit_loop._data_source.dataloader()
        n = _carvable_length(loader)
        n_dev = max(1, math.ceil(self.dev_fraction * n))  # type: ignore[operator]
        if n_dev >= n:
            raise CallbackMisuse(f"DevSplitEarlyStopping: dev_fraction={self.dev_fraction} of {n} rows leaves no "
                                 "training rows; lower dev_fraction")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.carve_seed)).tolist()
        dev_idx, train_idx = sorted(perm[:n_dev]), sorted(perm[n_dev:])
        train, dev = carve(loader, train_idx, dev_idx)
        trainer.fit_loop._data_source = _DataLoaderSource(train, "train_dataloader")
        trainer.fit_loop.epoch_loop.val_loop._data_source = _DataLoaderSource(dev, "val_dataloader")
        self._carved = {"train": len(train_idx), "dev": len(dev_idx), "seed": self.carve_seed}

    # ---- stopping and the best weights ------------------------------------------------------------
    @override
    def _run_early_stopping_check(self, trainer: Trainer) -> None:
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            raise CallbackMisuse(f"monitor {self.monitor!r} is not logged; logged: {', '.join(sorted(logs)) or 'none'}"
                                 "; set monitor= to one of them or self.log() it in validation_step")
        before = self.best_score.clone()
        super()._run_early_stopping_check(trainer)
        improved = bool(not torch.equal(self.best_score.cpu(), before.cpu()))
        improved = trainer.strategy.reduce_boolean_decision(improved, all=False)
        if improved:
            if not self.best_model_path:
                self.best_model_path = self._best_path(trainer)
            folder, name = os.path.split(self.best_model_path)
            staging = os.path.join(folder, f".{name}.tmp")
            if trainer.is_global_zero:
                os.makedirs(folder, exist_ok=True)
            trainer.save_checkpoint(staging, weights_only=True)
            if trainer.is_global_zero:
                with open(staging, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(staging, self.best_model_path)
            trainer.strategy.barrier("DevSplitEarlyStopping.best")
            self.best_epoch = trainer.current_epoch

    def _best_path(self, trainer: Trainer) -> str:
        folder = self.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "dev_best")
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{self.monitor}-{self.mode}")
        return os.path.join(folder, f"{slug}-{self._token}.ckpt")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted:
            return
        if not self.best_model_path:
            raise CallbackMisuse(f"DevSplitEarlyStopping: no best checkpoint was saved; is {self.monitor!r} logged "
                                 "in validation_step and is validation running?")
        ckpt = trainer.strategy.load_checkpoint(self.best_model_path)
        pl_module.load_state_dict(ckpt["state_dict"])
        self._fit_done = True

    # ---- the single test pass -----------------------------------------------------------------------
    def _guard_test(self) -> None:
        if self.leaky:
            return
        if not self._fit_done:
            raise HeldOutTooEarly("test evaluation requested before fit ended under a non-leaky protocol; run "
                                  "trainer.fit first, then DevSplitEarlyStopping.test_best(trainer, ...) (or set "
                                  "leaky=True to report the leaky protocol)")
        if self._tested:
            raise HeldOutTooEarly(f"the test split was already evaluated once (best checkpoint "
                                  f"{self.best_model_path}); a second evaluation is selection on test; start a new run")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._tested = True

    def test_best(self, trainer: Trainer, model: Optional[LightningModule] = None, **kwargs: Any) -> list[dict]:
        """Test once with the best-on-dev checkpoint; ``kwargs`` go to ``trainer.test`` (dataloaders, datamodule)."""
        if not self.best_model_path:
            raise CallbackMisuse("DevSplitEarlyStopping.test_best: no best checkpoint; run trainer.fit first")
        return trainer.test(model, ckpt_path=self.best_model_path, **kwargs)  # type: ignore[return-value]

    # ---- state and record -------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_model_path": self.best_model_path, "best_epoch": self.best_epoch,
                "tested": self._tested, "carved": self._carved, "token": self._token}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_model_path = state_dict.get("best_model_path", "")
        self.best_epoch = state_dict.get("best_epoch")
        self._tested = bool(state_dict.get("tested", False))
        self._token = state_dict.get("token") or self._token
        self._carved = state_dict.get("carved", self._carved)

    def record_extra(self) -> dict[str, Any]:
        path = self.best_model_path
        return {"dev_split_early_stopping": {
            "monitor": self.monitor, "mode": self.mode, "patience": self.patience, "leaky": self.leaky,
            "best_epoch": self.best_epoch, "best_score": float(self.best_score) if path else None,
            "best_checkpoint": path or None,
            "best_checkpoint_sha256": file_sha256(path) if path and os.path.isfile(path) else None,
            "carved": self._carved, "tested": self._tested}}


def _carvable_length(loader: Any) -> int:
    """The dataset length of a loader :func:`carve` can split, else a one-line refusal saying why."""
    what = "DevSplitEarlyStopping.dev_fraction"
    if type(loader) is not DataLoader:
        raise CallbackMisuse(f"{what}: cannot carve a {type(loader).__name__} (only a plain torch DataLoader, so "
                             "nothing it adds is lost); carve the dev split yourself and pass val_dataloaders")
    if isinstance(loader.dataset, IterableDataset) or not hasattr(loader.dataset, "__len__"):
        raise CallbackMisuse(f"{what}: cannot carve an iterable dataset ({type(loader.dataset).__name__}); carve "
                             "the dev split yourself and pass val_dataloaders")
    sampler = loader.sampler if loader.batch_size is not None else getattr(loader.batch_sampler, "sampler", None)
    if loader.batch_size is None and type(loader.batch_sampler) is not BatchSampler:
        raise CallbackMisuse(f"{what}: cannot carve a DataLoader with a custom batch_sampler "
                             f"({type(loader.batch_sampler).__name__}; it indexes the whole dataset); carve the dev "
                             "split yourself and pass val_dataloaders")
    if type(sampler) not in (SequentialSampler, RandomSampler) or (
            isinstance(sampler, RandomSampler) and sampler.num_samples != len(loader.dataset)):
        raise CallbackMisuse(f"{what}: cannot carve a DataLoader whose sampler is {type(sampler).__name__} (only "
                             "SequentialSampler, or RandomSampler over the whole dataset: shuffle=True/False); carve "
                             "the dev split yourself and pass val_dataloaders")
    return len(loader.dataset)


def carve(loader: DataLoader, train_idx: list[int], dev_idx: list[int]) -> tuple[DataLoader, DataLoader]:
    """The user's loader over ``Subset(dataset, train_idx)`` with everything else kept, and a sequential dev loader.

    Kept: batch size and drop_last (or the ``BatchSampler`` they came in), shuffling with its
    ``RandomSampler`` generator and replacement, the loader's generator, collate_fn, num_workers, pin_memory,
    timeout, worker_init_fn, multiprocessing_context, prefetch_factor, persistent_workers, pin_memory_device
    and in_order. The dev loader reads its rows in order, drops none and has no generator of its own.
    """
    _carvable_length(loader)
    auto = loader.batch_size is not None
    sampler = loader.sampler if auto else loader.batch_sampler.sampler  # type: ignore[union-attr]
    batch_size = loader.batch_size if auto else loader.batch_sampler.batch_size  # type: ignore[union-attr]
    drop_last = loader.drop_last if auto else loader.batch_sampler.drop_last  # type: ignore[union-attr]
    common: dict[str, Any] = {"num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
                              "pin_memory": loader.pin_memory, "timeout": loader.timeout,
                              "worker_init_fn": loader.worker_init_fn,
                              "multiprocessing_context": loader.multiprocessing_context,
                              "persistent_workers": loader.persistent_workers,
                              "pin_memory_device": loader.pin_memory_device}
    if loader.num_workers > 0:
        common["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        common["in_order"] = loader.in_order
    train_set, dev_set = Subset(loader.dataset, train_idx), Subset(loader.dataset, dev_idx)
    if isinstance(sampler, RandomSampler):
        new_sampler: Any = RandomSampler(train_set, replacement=sampler.replacement, generator=sampler.generator)
    else:
        new_sampler = SequentialSampler(train_set)
    if auto:
        train = DataLoader(train_set, batch_size=batch_size, sampler=new_sampler, drop_last=drop_last,
                           generator=loader.generator, **common)
    else:
        train = DataLoader(train_set, batch_sampler=BatchSampler(new_sampler, batch_size, drop_last),  # type: ignore[arg-type]
                           generator=loader.generator, **common)
    dev = DataLoader(dev_set, batch_size=batch_size, shuffle=False, drop_last=False, **common)
    return train, dev
