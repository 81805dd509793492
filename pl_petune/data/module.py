"""The task data module: load → protocol split → tokenize once → dataloaders with dynamic padding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch.utils.data import DataLoader, Sampler

from pl_petune.backbones import DEFAULT_BACKBONE, load_tokenizer, resolve_backbone
from pl_petune.data.batching import Collator, EpochSeededSampler, LengthGroupedSampler
from pl_petune.data.checks import OODSet, check_data_files, check_ood
from pl_petune.data.protocols import LEAKY, Split, check_protocol, limit_train, make_split
from pl_petune.data.sources import load_split, resolve_data_dir, source_id
from pl_petune.errors import ConfigError, PetuneError
from pl_petune.tasks import get_task

__all__ = ["TaskDataModule", "HeldOutAccessError", "OODSet", "EpochSeededSampler", "LengthGroupedSampler",
           "Collator", "check_data_files", "cache_root"]

ENV_CACHE = "PETUNE_CACHE"
FORMAT_VERSION = 2  # bump when formatting/tokenization changes, to invalidate caches


class HeldOutAccessError(PetuneError, RuntimeError):
    """The held-out split was asked for before fit ended under a non-leaky protocol."""


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "pl_petune")) / "tokenized"


class TaskDataModule(L.LightningDataModule):
    """One task under one protocol, tokenized once and cached.

    Args:
        task: registry name (``petune`` lists them in the error for an unknown one), e.g. ``cb``, ``rte``.
        data_dir: folder with ``glue/`` and ``super_glue/`` in the official layouts; ``None`` reads
            ``$PETUNE_DATA_DIR``, and if that is unset too, the Hugging Face hub.
        protocol: ``train_split`` (fair, default), ``petuning``, ``dev_split`` or ``leaky``.
        data_seed: seeds the protocol's split (when seeded), the training order and (via the CLI) dropout.
        tokenizer: backbone name or path whose tokenizer to use (the CLI links it to ``model.backbone``).
        max_length: truncation length (PETuning: 128).
        batch_size: training batch size; ``eval_batch_size`` for dev and test.
        dev_fraction: share of train carved out as dev (``train_split``, ``petuning``).
        train_limit: keep this many training examples (seeded, stratified), for data-size studies.
        ood: out-of-distribution sets by name (:class:`OODSet`), evaluated after the test pass with the same
            best weights and recorded as ``ood_metrics`` (``ood/<name>/<metric>``).
        pad_to_max_length: pad every batch to ``max_length`` (PETuning parity) instead of dynamically.
        group_by_length: batch training examples of similar length together (:class:`LengthGroupedSampler`),
            so dynamic padding pads less; the order stays a function of ``data_seed`` and the epoch.
        num_workers: dataloader workers.
    """

    def __init__(
        self,
        task: str = "cb",
        data_dir: Optional[str] = None,
        protocol: str = "train_split",
        data_seed: int = 42,
        tokenizer: str = DEFAULT_BACKBONE,
        max_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        dev_fraction: float = 0.1,
        train_limit: Optional[int] = None,
        ood: Optional[dict[str, OODSet]] = None,
        pad_to_max_length: bool = False,
        num_workers: int = 0,
        group_by_length: bool = False,
    ) -> None:
        super().__init__()
        self.spec = get_task(task)
        self.task = task
        resolve_data_dir(data_dir)  # a missing folder is refused now; missing files at setup (check_data_files)
        self.data_dir = data_dir
        self.protocol = check_protocol(protocol)
        self.data_seed = int(data_seed)
        self.tokenizer_name = tokenizer
        if max_length < 8:
            raise ConfigError(f"max_length {max_length} is too short; use at least 8")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        if not 0.0 < dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction {dev_fraction!r} must be in (0, 1)")
        if train_limit is not None and train_limit < 1:
            raise ConfigError(f"data.train_limit {train_limit!r} must be a positive number of examples")
        self.dev_fraction = dev_fraction
        self.train_limit = train_limit
        self.ood = {name: check_ood(name, o, self.spec) for name, o in (ood or {}).items()}
        self.pad_to_max_length = pad_to_max_length
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self._tok = None
        self._official: dict[str, Any] = {}
        self._split: Split | None = None
        self.leaky_test = False
        self._fit_completed = False
        self._heldout_checkpoint: str | None = None
        self._heldout_scored = False
        self._in_fit = False
        self.datasets: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able (what a :class:`~pl_petune.recorder.RunRecorder` records)."""
        return {"task": self.task, "data_dir": self.data_dir, "protocol": self.protocol, "data_seed": self.data_seed,
                "tokenizer": self.tokenizer_name, "max_length": self.max_length, "batch_size": self.batch_size,
                "eval_batch_size": self.eval_batch_size, "dev_fraction": self.dev_fraction,
                "train_limit": self.train_limit, "pad_to_max_length": self.pad_to_max_length,
                "num_workers": self.num_workers, "group_by_length": self.group_by_length,
                "ood": {n: {"task": o.task, "split": o.split, "label_map": dict(o.label_map)}
                        for n, o in self.ood.items()}}

    # ---- the held-out guard --------------------------------------------------------------------
    @property
    def leaky(self) -> bool:
        """Whether the held-out scores of this data module are not a held-out result: a leaky protocol, or a
        test pass asked for with :meth:`allow_leaky_test`."""
        return self.protocol in LEAKY or self.leaky_test

    def allow_leaky_test(self) -> None:
        """Let the test split be scored without the protocol's conditions (no completed fit, any checkpoint,
        any number of times). Every record and output of such a pass says ``leaky`` (``petune test
        --run.allow_leaky_test true``)."""
        self.leaky_test = True

    def permit_heldout_pass(self, checkpoint: str) -> None:
        """Allow one test pass with ``checkpoint``, the recorded best-on-dev checkpoint of a complete run.

        ``petune test`` calls this after checking the run's ``record.json`` (complete, same task, protocol and
        split seed, the checkpoint's SHA-256): it scores the recorded held-out pass again, no new selection.
        """
        self._heldout_checkpoint = str(checkpoint)
        self._fit_completed = True

    def _heldout_refusal(self, what: str, testing: bool) -> str | None:
        """Why ``what`` may not be read now (None: it may). See docs/protocol.md."""
        if self.leaky:
            return None
        head = f"the held-out test split of {self.task} (protocol {self.protocol!r}) was requested {what}"
        hint = ("; petune fit scores it once with the best-on-dev checkpoint (dm.allow_leaky_test() or "
                "--run.allow_leaky_test true scores it anyway, marked leaky)")
        trainer = getattr(self, "trainer", None)
        running = trainer is not None and trainer.state.status == TrainerStatus.RUNNING
        fn = trainer.state.fn if running else None  # type: ignore[union-attr]
        if fn == TrainerFn.FITTING:
            return head + " during fit" + hint
        if not self._fit_completed:
            return head + " before any fit completed on this data module" + hint
        if not testing:
            return None
        if fn != TrainerFn.TESTING:
            return head + " outside trainer.test" + hint
        if self._heldout_scored:
            return head + " a second time; it is scored once per completed fit" + hint
        best, given = self._heldout_checkpoint, trainer.ckpt_path  # type: ignore[union-attr]
        if not best:
            return head + " but the fit saved no best-on-dev checkpoint (add a ModelCheckpoint on a dev metric)" + hint
        if given is None or Path(str(given)).resolve() != Path(best).resolve():
            return head + f" with checkpoint {given!r}; it is scored with the fit's best-on-dev checkpoint " \
                          f"{best!r} (trainer.test(..., ckpt_path='best'))" + hint
        return None

    def _guard_heldout(self, what: str = "", testing: bool = False) -> None:
        refusal = self._heldout_refusal(what, testing)
        if refusal is not None:
            raise HeldOutAccessError(refusal.replace("  ", " "))

    # ---- data -------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer_name)
        return self._tok

    def official(self, split: str):
        """The tokenized official split (``train`` or ``dev``), from the cache when possible.

        Raises:
            HeldOutAccessError: the split holds held-out rows (``dev`` under every non-leaky protocol) and the
                held-out split may not be read now.
        """
        if split not in ("train", "dev"):
            raise ConfigError(f"unknown official split {split!r}; allowed: train, dev")
        if self.split().parts["test"][0] == split:
            self._guard_heldout(f"through official({split!r}), which holds it,")
        return self._official_split(split)

    def _official_split(self, split: str):
        if split not in self._official:
            self._official[split] = self._tokenized(split)
        return self._official[split]

    def _cache_key(self, split: str, spec=None) -> str:
        spec = spec or self.spec
        root = resolve_data_dir(self.data_dir)
        try:
            source = source_id(spec, split, root)
        except OSError:  # a missing or unreadable file: load_split's check names it and what the folder holds
            load_split(spec, split, self.data_dir)
            raise
        ident = {"task": spec.name, "source": source,
                 "tokenizer": resolve_backbone(self.tokenizer_name), "max_length": self.max_length,
                 "format": FORMAT_VERSION}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    def _tokenized(self, split: str, spec=None):
        import datasets

        spec = spec or self.spec
        datasets.disable_progress_bars()
        path = cache_root() / f"{spec.name}-{split}-{self._cache_key(split, spec)}"
        if (path / "dataset_info.json").exists():
            return datasets.load_from_disk(str(path))
        raw = load_split(spec, split, self.data_dir)
        tok, fmt, max_len = self.tokenizer, spec.format, self.max_length

        def encode(batch: dict[str, list]) -> dict[str, list]:
            rows = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
            out: dict[str, list] = {}
            for row in rows:
                pairs = fmt(row)
                if isinstance(pairs, list):  # multiple choice: one encoding per choice
                    enc = tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_len)
                else:
                    first, second = pairs
                    enc = tok(first, second, truncation=True, max_length=max_len)
                for k, v in enc.items():
                    out.setdefault(k, []).append(v)
            return out

        ds = raw.map(encode, batched=True, remove_columns=[c for c in raw.column_names if c != "label"])
        staging = path.with_name(path.name + f".tmp{os.getpid()}")
        ds.save_to_disk(str(staging))
        try:
            os.replace(staging, path)  # atomic: a half-written cache is never read
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race; use theirs
        return datasets.load_from_disk(str(path))

    def split(self) -> Split:
        """The protocol's index split (computed from labels only; the test rows are not materialised)."""
        if self._split is None:
            train_labels = self._official_split("train")["label"]
            dev_labels = self._official_split("dev")["label"]
            regression = self.spec.kind == "regression"
            split = make_split(self.protocol, train_labels, dev_labels, self.data_seed, self.dev_fraction, regression)
            src, _ = split.parts["train"]
            self._split = limit_train(split, self.train_limit, self.data_seed, self._official_split(src)["label"])
        return self._split

    def _part(self, name: str):
        src, idx = self.split().parts[name]
        return self._official_split(src).select(idx.tolist())

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._fit_completed = False  # a new fit: the held-out split waits for its end
            self._in_fit = True
            self._heldout_checkpoint = None
            self.datasets["train"] = self._part("train")
            self.datasets["dev"] = self._part("dev")
        elif stage == "validate":
            self.datasets["dev"] = self._part("dev")
        # the test split is built in test_dataloader(), behind the guard

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._in_fit = False
        trainer = getattr(self, "trainer", None)
        # Lightning calls teardown("fit") only when fit returns normally (not after an exception).
        if stage == "fit" and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self._fit_completed = True
            self._heldout_checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", None) or None

    def _collator(self) -> Collator:
        return Collator(self.tokenizer.pad_token_id or 0, self.max_length if self.pad_to_max_length else None)

    def train_dataloader(self) -> DataLoader:
        ds = self.datasets.get("train") or self._part("train")
        if self.group_by_length:
            lengths = [max(len(s) for s in ids) if ids and isinstance(ids[0], list) else len(ids)
                       for ids in ds["input_ids"]]
            sampler: Sampler[int] = LengthGroupedSampler(lengths, self.batch_size, self.data_seed)
        else:
            sampler = EpochSeededSampler(len(ds), self.data_seed)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=self._collator(), num_workers=self.num_workers, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        ds = self.datasets.get("dev") or self._part("dev")
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._collator(),
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        """The held-out split: once, in ``trainer.test`` with the best-on-dev checkpoint of a completed fit.

        Raises:
            HeldOutAccessError: any other time (see docs/protocol.md), unless the protocol is leaky or
                :meth:`allow_leaky_test` was called.
        """
        self._guard_heldout("by test_dataloader()", testing=True)
        ds = self._part("test")
        self._heldout_scored = True
        self.datasets["test"] = ds
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._collator(),
                          num_workers=self.num_workers)

    def ood_dataloader(self, name: str) -> DataLoader:
        """The out-of-distribution set ``name``, labels mapped to the training task's ids (refused during fit)."""
        if name not in self.ood:
            raise ConfigError(f"unknown OOD set {name!r}; declared: {', '.join(self.ood) or 'none'}")
        trainer = getattr(self, "trainer", None)
        fitting = self._in_fit or (trainer is not None and trainer.state.status == TrainerStatus.RUNNING
                                   and trainer.state.fn == TrainerFn.FITTING)
        if fitting and not self.leaky:  # OOD sets are scored after fit, never used to select
            raise HeldOutAccessError(f"the OOD set {name!r} of {self.task} was requested during fit; it is scored "
                                     "after the test pass with the best-on-dev checkpoint")
        ood_set = self.ood[name]
        spec = get_task(ood_set.task)
        ids = [self.spec.labels.index(ood_set.label_map[label]) for label in spec.labels]
        ds = self._tokenized(ood_set.split, spec).map(lambda row: {"label": ids[row["label"]]}, keep_in_memory=True)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._collator(),
                          num_workers=self.num_workers)

    # ---- facts for records --------------------------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        return self.split().sizes()

    def majority_baseline(self) -> dict[str, float] | None:
        """Scores of always predicting the train majority class on the test split (classification only).

        Raises:
            HeldOutAccessError: the held-out split has not been scored yet (its labels are held out too).
        """
        if self.spec.kind != "classification":
            return None
        from pl_petune.metrics import score_predictions

        train = np.asarray(self._part("train")["label"])
        majority = int(np.bincount(train).argmax())
        test = self._heldout_labels("the majority baseline")
        return score_predictions(self.spec, np.full_like(test, majority), test)

    def mean_baseline(self) -> dict[str, float | None] | None:
        """A constant prediction of the train labels' mean on the test split (regression only).

        Returns:
            ``{"prediction": train mean, "mse": its mean squared error on the test split, "pearson": None,
            "spearman": None}``: the correlations of a constant prediction are undefined (zero variance), so
            they are None, never a number. The model's ``test/loss`` is its MSE, comparable with ``mse``.
        """
        if self.spec.kind != "regression":
            return None
        mean = float(np.mean(np.asarray(self._part("train")["label"], dtype=float)))
        test = self._heldout_labels("the mean baseline").astype(float)
        return {"prediction": mean, "mse": float(np.mean((test - mean) ** 2)), "pearson": None, "spearman": None}

    def _heldout_labels(self, what: str) -> np.ndarray:
        if "test" not in self.datasets:
            if not self.leaky:
                raise HeldOutAccessError(f"{what} of {self.task} reads the held-out labels; it is computed "
                                         "after the held-out pass (trainer.test)")
            self.datasets["test"] = self._part("test")
        return np.asarray(self.datasets["test"]["label"])
