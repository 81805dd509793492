"""The run lifecycle as a Lightning callback: ``running`` → dev history → ``complete`` or ``failed``.

``petune fit`` adds a :class:`RunRecorder` to its trainer; a plain Lightning user gets the same run folder,
``record.json`` and store row by adding one to their own ``Trainer``::

    trainer = L.Trainer(callbacks=[ModelCheckpoint(monitor="dev/loss", dirpath=...), RunRecorder(out_dir="runs")])
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, ckpt_path="best")   # the held-out pass completes the record
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import lightning as L
from jsonargparse.typing import register_type
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from pl_petune.callbacks._common import file_sha256
from pl_petune.data.module import HeldOutAccessError
from pl_petune.errors import ConfigError
from pl_petune.record_build import complete_record, start_record, stop_fields
from pl_petune.records import run_key, write_json
from pl_petune.store import Store, default_store_path


class HeadlineSpec(str):
    """``--run.headline``: the metric this run's study reports for its task, as ``TASK=METRIC`` pairs
    (comma-separated) or a preset (``revisiting``, ``modulewise``); checked when the command is parsed."""


def _headline_spec(value: Any) -> str:
    from pl_petune.stats.headlines import HEADLINES, parse_headline

    try:
        parse_headline(str(value))
    except ValueError as err:  # the tag lets the CLI's condenser print one line (pl_petune.argtypes)
        raise ValueError(f"not accepted: must be TASK=METRIC pairs of a task's metrics or a preset "
                         f"({', '.join(HEADLINES)}), got {str(value)!r} ({err})") from None
    return str(value)


register_type(HeadlineSpec, str, _headline_spec)


class RunRecorder(Callback):
    """Writes a run's record into its run folder and the results store as the run goes.

    Fit start writes the ``running`` record (``<run_dir>/record.json`` and the store); every dev epoch adds its
    ``dev/*`` metrics to the history; the end of the test pass after a completed fit writes the ``complete``
    record (best-on-dev selection, held-out scores, OOD sets, W&B summary); an exception marks the run
    ``failed``; teardown after the test pass removes the checkpoints unless ``keep_checkpoints``.

    Args:
        out_dir: root of run folders; a run gets ``<out_dir>/<task>/<method>/<run key>/`` unless ``run_dir``.
        store: the SQLite results store (default ``$PETUNE_STORE`` or ``runs/results.sqlite``).
        keep_checkpoints: keep ``<run_dir>/checkpoints`` after the test pass (the record keeps their hash).
        name: optional label stored in the record (e.g. a sweep name).
        run_key: the run's key; default: the hash of ``identity``.
        run_dir: the run folder; default under ``out_dir``.
        identity: what identifies the run; default: the module's hyper-parameters, the data module's
            config and the trainer's epoch limit.
        hparams: the record's ``hparams``; default: ``identity``.
        model_class: the record's ``model_class``; default: the module's import path.
        seed_mode: ``separate`` or ``tied`` (PETuning's one seed for both).
        resumed: whether this attempt continues from an earlier one's checkpoint.
        save_predictions: write the held-out pass's per-example predictions (and each OOD set's) beside
            ``record.json`` and name them in the record with their SHA-256 (:mod:`pl_petune.predictions`).
        keep_optimizer_state: with ``keep_checkpoints``, keep the kept files whole (optimizer and scheduler
            state, to train on from them); by default a kept checkpoint holds what evaluation needs (weights,
            hyper-parameters, callbacks' state), and the best one is made so before the held-out pass.
        headline: the metric the study reports for this run's task (``TASK=METRIC`` pairs or a preset; see
            :mod:`pl_petune.stats.headlines`), recorded as ``headline`` and used by ``petune report``.
    """

    def __init__(
        self,
        out_dir: str = "runs",
        store: Optional[str] = None,
        keep_checkpoints: bool = False,
        name: Optional[str] = None,
        *,
        run_key: Optional[str] = None,
        run_dir: Optional[str] = None,
        identity: Optional[Mapping[str, Any]] = None,
        hparams: Optional[Mapping[str, Any]] = None,
        model_class: Optional[str] = None,
        seed_mode: str = "separate",
        resumed: bool = False,
        save_predictions: bool = False,
        keep_optimizer_state: bool = False,
        headline: Optional[str] = None,
    ) -> None:
        if seed_mode not in ("separate", "tied"):
            raise ConfigError(f"seed_mode {seed_mode!r} is unknown; allowed: separate, tied")
        from pl_petune.stats.headlines import parse_headline

        try:
            self.headline = parse_headline(headline) if headline is not None else {}
        except ValueError as err:
            raise ConfigError(f"run.headline: {err}") from None
        self.save_predictions = save_predictions
        self.keep_optimizer_state = keep_optimizer_state
        self.out_dir = out_dir
        self.store_path = store
        self.keep_checkpoints = keep_checkpoints
        self.name = name
        self.run_key = run_key
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.identity = dict(identity) if identity is not None else None
        self.hparams = dict(hparams) if hparams is not None else None
        self.model_class = model_class
        self.seed_mode = seed_mode
        self.resumed = resumed
        self.record: Optional[dict[str, Any]] = None
        self.history: dict[int, dict[str, float]] = {}
        self._store: Optional[Store] = None
        self._t0 = 0.0
        self._fit_ended = False
        self._stop: dict[str, Any] = {}
        self._capture: Any = None  # pl_petune.predictions.Capture during a held-out pass that saves predictions

    # ---- identity of a plain-Lightning run ---------------------------------------------------------
    def _resolve(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if dm is None or not hasattr(dm, "split_sizes") or not hasattr(pl_module, "parameter_report"):
            raise ConfigError("RunRecorder records pl_petune runs: fit a pl_petune method module with a "
                              "pl_petune.data.TaskDataModule (trainer.fit(model, datamodule=dm))")
        cls = type(pl_module)
        if self.model_class is None:
            self.model_class = f"{cls.__module__}.{cls.__qualname__}"
        if self.identity is None:
            self.identity = {"model.class_path": self.model_class,
                             **{f"model.init_args.{k}": v for k, v in pl_module.hparams.items()},
                             **{f"data.{k}": v for k, v in dm.config().items() if k not in ("data_dir", "num_workers",
                                                                                           "eval_batch_size")},
                             "trainer.max_epochs": trainer.max_epochs}
        if self.hparams is None:
            self.hparams = dict(self.identity)
        if self.run_key is None:
            self.run_key = run_key(self.identity)
        if self.run_dir is None:
            self.run_dir = Path(self.out_dir) / pl_module.spec.name / _method(pl_module) / self.run_key  # type: ignore[operator, union-attr]

    def _extras(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """What the module and callbacks add to the record (``record_extra()``: stage plans, solvers, ...)."""
        extra: dict[str, Any] = {}
        for obj in [pl_module, *trainer.callbacks]:  # type: ignore[attr-defined]
            fn = getattr(obj, "record_extra", None)
            if callable(fn):
                extra.update(fn())
        return extra

    def _write(self, record: dict[str, Any]) -> None:
        assert self._store is not None and self.run_dir is not None
        self.record = record
        if record["status"] != "complete" and self._keeps_complete():
            return  # a rerun: the earlier complete record stays (store and record.json) until this one completes
        # this fit's own complete record supersedes a rerun's earlier one (the store refuses that otherwise)
        self._store.put(record, replace=record["status"] == "complete")
        write_json(self.run_dir / "record.json", record)

    def _keeps_complete(self) -> bool:
        """Whether the store or ``record.json`` already holds this run's complete record."""
        assert self._store is not None and self.run_dir is not None
        if self._store.status(str(self.run_key)) == "complete":
            return True
        try:
            return json.loads((self.run_dir / "record.json").read_text()).get("status") == "complete"
        except (OSError, ValueError):
            return False

    # ---- lifecycle -------------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_predictions and trainer.world_size > 1:
            raise ConfigError(f"run.save_predictions writes one file from one process; this trainer has "
                              f"{trainer.world_size} (run the held-out pass on one device)")
        self._resolve(trainer, pl_module)
        dm = trainer.datamodule  # type: ignore[attr-defined]
        self._t0 = time.time()
        self._fit_ended = False
        self._store = Store(self.store_path or default_store_path())
        ckpt = trainer.checkpoint_callback
        assert self.run_dir is not None and self.run_key is not None and self.hparams is not None
        self._write(start_record(
            run_key=self.run_key, spec=pl_module.spec, method=_method(pl_module), model_class=str(self.model_class),
            backbone=pl_module.hparams.get("backbone"), protocol=dm.protocol, leaky=dm.leaky,
            init_seed=pl_module.hparams.get("init_seed"), data_seed=dm.data_seed, seed_mode=self.seed_mode,
            hparams=self.hparams, identity=self.identity or {}, monitor=getattr(ckpt, "monitor", None),
            sizes=dm.split_sizes(), param_report=pl_module.parameter_report(), run_dir=str(self.run_dir),  # type: ignore[operator]
            resumed=self.resumed, name=self.name, extra=self._extras(trainer, pl_module),
            headline={t: m for t, m in self.headline.items() if t == pl_module.spec.name} or None,  # type: ignore[union-attr]
        ))

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.history[trainer.current_epoch] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                               if k.startswith("dev/")}

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_ended = True
        self._stop = _stop(trainer)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if self.keep_checkpoints and not self.keep_optimizer_state and best and trainer.is_global_zero \
                and not trainer.interrupted:
            from pl_petune.checkpoint_io import slim_checkpoint

            slim_checkpoint(best)  # the held-out pass then scores, and the record hashes, the file that is kept

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_predictions and self._fit_ended and self.record is not None \
                and self.record["status"] == "running":
            from pl_petune.predictions import Capture

            self._capture = Capture(pl_module)

    @override
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._capture is not None:
            self._capture.batch_end(batch["labels"], batch_idx)

    def _unhook(self) -> None:
        if self._capture is not None:
            self._capture.stop()

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unhook()  # before the OOD passes below, which call forward too
        if not self._fit_ended or self.record is None or self.record["status"] != "running":
            return
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "")
        if not best:
            return
        dm = trainer.datamodule  # type: ignore[attr-defined]
        best_epoch = _checkpoint_epoch(best)
        record = complete_record(
            self.record, best_path=best, best_sha256=file_sha256(best),
            best_score=float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,  # type: ignore[union-attr]
            best_epoch=best_epoch, dev_metrics=self.history.get(best_epoch, {}) if best_epoch is not None else {},
            test_metrics={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
            epochs=trainer.current_epoch, steps=trainer.global_step, wall_time_s=time.time() - self._t0,
            majority_baseline=dm.majority_baseline(), mean_baseline=dm.mean_baseline(), stop=self._stop,
            extra=self._extras(trainer, pl_module),
        )
        record["leaky"] = bool(dm.leaky)  # a test pass the user let leak (dm.allow_leaky_test()) is flagged too
        ood_outputs: Optional[dict[str, Any]] = {} if self.save_predictions else None
        if dm.ood:  # the same best weights the test pass loaded, on each declared OOD set (docs/analyses.md)
            from pl_petune.inference import evaluate_ood

            record["ood_metrics"], record["ood_sizes"] = evaluate_ood(pl_module, dm, ood_outputs)
            record["ood_sets"] = {n: {"task": o.task, "split": o.split, "label_map": dict(o.label_map)}
                                  for n, o in dm.ood.items()}
        if self._capture is not None:
            assert self.run_dir is not None
            record["predictions"] = self._capture.write(self.run_dir, dm, ood_outputs or {})
            self._capture = None
        self._write(record)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "test" or self.record is None or self.record["status"] != "complete":
            return
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if type(logger).__name__ == "WandbLogger" and exp is not None:
                from pl_petune.record_build import log_record_to_wandb

                log_record_to_wandb(exp, self.record)
                exp.finish()  # flush it; a later fit in this process starts its own W&B run
        if not self.keep_checkpoints and self.run_dir is not None:
            discard_checkpoints(self.run_dir / "checkpoints")
        elif self.keep_checkpoints and not self.keep_optimizer_state and trainer.is_global_zero:
            from pl_petune.checkpoint_io import slim_checkpoint

            for path in self._kept_files(trainer):
                slim_checkpoint(path)

    def _kept_files(self, trainer: L.Trainer) -> list[Path]:
        """The checkpoint files this run keeps: every ``*.ckpt`` of its own checkpoint folder (last, stage 1,
        best), or, for a checkpoint folder of the user's, the best and last files only."""
        ckpt = trainer.checkpoint_callback
        named = [Path(p) for p in (getattr(ckpt, "best_model_path", ""), getattr(ckpt, "last_model_path", "")) if p]
        own = self.run_dir / "checkpoints" if self.run_dir is not None else None
        files = sorted(own.glob("*.ckpt")) if own is not None and own.is_dir() else []
        return [p for p in dict.fromkeys([*files, *named]) if p.is_file()]

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unhook()
        if isinstance(exception, HeldOutAccessError):  # a refused read scored nothing: the run can still complete
            return
        self.fail(exception)

    def fail(self, err: BaseException) -> None:
        """Mark a started, unfinished run ``failed``, or ``interrupted`` (resumable) when a signal stopped it
        (store and ``record.json``); a no-op otherwise. A rerun's earlier complete record is kept."""
        if self.record is None or self.record["status"] != "running" or self._store is None:
            return
        from pl_petune.signals import interrupt_of

        assert self.run_dir is not None
        stop = interrupt_of(err)
        reason = f"{type(err).__name__}: {err}"
        record = {**self.record, "status": "interrupted" if stop else "failed", "error": reason[-2000:]}
        if stop is not None:
            last = self.run_dir / "checkpoints" / "last.ckpt"
            record["extra"] = {**record.get("extra", {}), "interrupted": {
                "signal": stop.name, "resume_from": str(last) if last.is_file() else None}}
        self.record = record
        try:
            if self._keeps_complete():
                return
            if stop is not None:
                self._store.put(record)
            else:
                self._store.mark_failed(str(self.run_key), reason)
            write_json(self.run_dir / "record.json", record)
        except (OSError, sqlite3.Error):  # a full disk may not take the mark either; the error's own line says why
            pass

    # ---- resume ------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): v for k, v in state_dict.get("history", {}).items()}


_ES_REASONS = {EarlyStoppingReason.PATIENCE_EXHAUSTED: "patience",
               EarlyStoppingReason.STOPPING_THRESHOLD: "stopping_threshold",
               EarlyStoppingReason.DIVERGENCE_THRESHOLD: "divergence_threshold",
               EarlyStoppingReason.NON_FINITE_METRIC: "non_finite"}


def _stop(trainer: L.Trainer) -> dict[str, Any]:
    """The stop fields of a fit that just ended (see :func:`~pl_petune.record_build.stop_fields`)."""
    by_es = next(((_ES_REASONS[es.stopping_reason], es.stopped_epoch, es.stopping_reason_message)
                  for es in trainer.early_stopping_callbacks if es.stopping_reason in _ES_REASONS), None)
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)  # type: ignore[attr-defined]
    out_of_time = timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0  # type: ignore[operator]
    return stop_fields(by_es, trainer.current_epoch, trainer.max_epochs, trainer.global_step, trainer.max_steps,
                       out_of_time, trainer.should_stop)


def _method(pl_module: L.LightningModule) -> str:
    return getattr(type(pl_module), "method_name", type(pl_module).__name__)


def _checkpoint_epoch(path: str) -> Optional[int]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state.get("epoch"))
    except Exception:
        return None


def discard_checkpoints(ckpt_dir: Path) -> None:
    """Remove a finished run's checkpoint folder so that a kill at any instant leaves no resumable half of it.

    The folder is first renamed (atomic on one file system), then deleted: a rerun never finds a ``last.ckpt``
    whose best checkpoint was already removed. Leftovers of an interrupted deletion are swept on the next call.
    """
    ckpt_dir = Path(ckpt_dir)
    for old in ckpt_dir.parent.glob(f".{ckpt_dir.name}.discard-*"):
        shutil.rmtree(old, ignore_errors=True)
    if ckpt_dir.exists():
        trash = ckpt_dir.with_name(f".{ckpt_dir.name}.discard-{os.getpid()}-{time.time_ns()}")
        os.replace(ckpt_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
