"""DevSplitEarlyStopping: early stopping on a development split, the best weights restored, one test pass.

The fair protocol of "Revisiting Parameter-Efficient Tuning" (EMNLP 2022) as one drop-in callback: model
selection and early stopping see only the development split (given, or carved from train), the held-out
test split is evaluated once, after fit, with the best-on-dev weights; asking for it earlier is an error.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, RandomSampler, Subset
from typing_extensions import override

from pl_petune.callbacks._common import CallbackMisuse, check_strategy, file_sha256


class HeldOutTooEarly(CallbackMisuse, RuntimeError):
    """A test evaluation was asked for before fit ended (or a second time) under a non-leaky protocol."""


class DevSplitEarlyStopping(EarlyStopping):
    r"""Early stopping on the development split, best weights restored at the end, the test split read once.

    Args:
        monitor: the development metric, as logged (e.g. ``"val_loss"``, ``"dev/loss"``).
        mode: ``"min"`` or ``"max"``.
        patience: validation checks without improvement before stopping (one check per epoch by default).
        min_delta: minimum change that counts as an improvement.
        dev_fraction: when fit has no validation dataloader, carve this share of the training set (seeded
            shuffle, ``carve_seed``) as the development split; ``None`` requires a given one.
        carve_seed: seed of the carve.
        dirpath: folder of the best checkpoint (default ``<default_root_dir>/dev_best``).
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

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 10, min_delta: float = 0.0,
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
        val_source = trainer.fit_loop.epoch_loop.val_loop._data_source
        if val_source.is_defined() and (val_source.instance is not None):
            return
        if self.dev_fraction is None:
            raise CallbackMisuse("DevSplitEarlyStopping: fit has no development split; pass val_dataloaders (or "
                                 "define val_dataloader()), or set dev_fraction=0.1 to carve one from train")
        self._carve(trainer)

    def _carve(self, trainer: Trainer) -> None:
        from lightning.pytorch.trainer.connectors.data_connector import _DataLoaderSource

        loader = trainer.fit_loop._data_source.dataloader()
        if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
            raise CallbackMisuse("DevSplitEarlyStopping.dev_fraction carves a single sized DataLoader; pass a "
                                 "development split instead")
        n = len(loader.dataset)
        n_dev = max(1, math.ceil(self.dev_fraction * n))
        if n_dev >= n:
            raise CallbackMisuse(f"DevSplitEarlyStopping: dev_fraction={self.dev_fraction} of {n} rows leaves no "
                                 "training rows; lower dev_fraction")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.carve_seed)).tolist()
        dev_idx, train_idx = sorted(perm[:n_dev]), sorted(perm[n_dev:])
        common = {"batch_size": loader.batch_size, "collate_fn": loader.collate_fn, "num_workers": loader.num_workers}
        shuffle = isinstance(loader.sampler, RandomSampler)
        train = DataLoader(Subset(loader.dataset, train_idx), shuffle=shuffle, drop_last=loader.drop_last, **common)
        dev = DataLoader(Subset(loader.dataset, dev_idx), shuffle=False, **common)
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
            folder = self.dirpath or os.path.join(trainer.default_root_dir, "dev_best")
            self.best_model_path = os.path.join(folder, "best.ckpt")
            if trainer.is_global_zero:
                os.makedirs(folder, exist_ok=True)
            trainer.save_checkpoint(self.best_model_path, weights_only=True)
            self.best_epoch = trainer.current_epoch

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
        return trainer.test(model, ckpt_path=self.best_model_path, **kwargs)

    # ---- state and record -------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_model_path": self.best_model_path, "best_epoch": self.best_epoch,
                "tested": self._tested, "carved": self._carved}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_model_path = state_dict.get("best_model_path", "")
        self.best_epoch = state_dict.get("best_epoch")
        self._tested = bool(state_dict.get("tested", False))

    def record_extra(self) -> dict[str, Any]:
        path = self.best_model_path
        return {"dev_split_early_stopping": {
            "monitor": self.monitor, "mode": self.mode, "patience": self.patience, "leaky": self.leaky,
            "best_epoch": self.best_epoch, "best_score": float(self.best_score) if path else None,
            "best_checkpoint": path or None,
            "best_checkpoint_sha256": file_sha256(path) if path and os.path.isfile(path) else None,
            "carved": self._carved, "tested": self._tested}}
