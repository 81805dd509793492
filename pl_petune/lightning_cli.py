"""``petune fit|validate|test``: Lightning's CLI with the fair protocol built in.

``petune fit`` = early stopping and checkpointing on the development split → one test pass on the
held-out split with the best checkpoint → a run record in the results store (and the W&B summary when a
W&B logger is configured). The task's facts flow from ``data.task`` to ``model.init_args.task`` and the
backbone's name to the data module's tokenizer by argument links, so data and methods never import each
other.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from pl_petune.callbacks._common import file_sha256
from pl_petune.data.module import TaskDataModule
from pl_petune.errors import ConfigError, PetuneError
from pl_petune.faults import RunGuard, one_line
from pl_petune.methods import PetuneModule
from pl_petune.records import SCHEMA_VERSION, git_revision, now_iso, run_key, versions, write_json
from pl_petune.store import Store, default_store_path

# Config keys that do not change a run's numbers: left out of its key.
NON_IDENTITY = {
    "config", "run", "ckpt_path", "verbose",
    "data.data_dir", "data.num_workers", "data.eval_batch_size",
    "trainer.logger", "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.devices", "trainer.accelerator",
    "checkpoint.dirpath", "checkpoint.filename", "checkpoint.save_last", "checkpoint.verbose",
    "checkpoint.save_top_k", "early_stopping.verbose",
}


@dataclass
class RunOptions:
    """Where a run writes, and how it treats an earlier attempt.

    Args:
        seed: PETuning's single seed: when set, it is both ``model.init_args.init_seed`` and
            ``data.data_seed`` (the released scripts' ``--seed $s --model_seed $s``).
        out_dir: root of run folders; each run gets ``<out_dir>/<task>/<method>/<run key>/``.
        store: the SQLite results store (default ``$PETUNE_STORE`` or ``runs/results.sqlite``).
        resume: continue from the run folder's ``last.ckpt`` when an earlier attempt left one.
        keep_checkpoints: keep the checkpoint files after the test pass (the record keeps their hash).
        name: optional label stored in the record (e.g. a sweep name).
        rerun: train again a run whose record in the store is already complete (the new record replaces it).
            By default such a run is not trained twice: ``petune fit`` prints its record's line and exits 0,
            as a sweep skips it.
    """

    seed: Optional[int] = None
    out_dir: str = "runs"
    store: Optional[str] = None
    resume: bool = True
    keep_checkpoints: bool = False
    name: Optional[str] = None
    rerun: bool = False


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


# The run whose "running" record this process wrote; marked failed if the process fails before completing.
_ACTIVE: dict[str, Any] = {}
# Fault handling of the command being run (lock, held output, signal guard); run_lightning_cli replaces it.
_GUARD: list[RunGuard] = [RunGuard()]


class AlreadyComplete(Exception):
    """The run's record is complete in the store: nothing to train (``run.rerun`` forces it)."""


class ArgumentsError(PetuneError):
    """A command line or recipe that does not parse (condensed to one line)."""


class _Parser(LightningArgumentParser):
    """Lightning's parser whose errors become one line (the bad key and value) instead of usage + report."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        cause = _petune_cause(ex)  # a class's own refusal (e.g. ConfigError from __init__) keeps its words
        if cause is not None:
            raise cause
        raise ArgumentsError(_one_line(message))


def _petune_cause(err: BaseException | None) -> PetuneError | None:
    """The first :class:`PetuneError` in ``err``'s chain (jsonargparse wraps a class's refusal in ValueError)."""
    while err is not None and not isinstance(err, PetuneError):
        err = err.__cause__ or err.__context__
    return err


class PetuneCLI(LightningCLI):
    """The Lightning CLI, plus the protocol: dev-only stopping, one test pass, a run record."""


    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.task", "model.init_args.task")
        parser.link_arguments("model.init_args.backbone", "data.tokenizer")
        parser.add_class_arguments(RunOptions, "run")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # PETuning parity defaults: dev loss, patience 10 (one validation per epoch), at most 50 epochs.
        parser.set_defaults({
            "early_stopping.monitor": "dev/loss", "early_stopping.patience": 10, "early_stopping.mode": "min",
            "checkpoint.save_top_k": 1, "checkpoint.save_last": True, "checkpoint.filename": "best",
            "trainer.max_epochs": 50, "trainer.gradient_clip_val": 1.0, "trainer.deterministic": True,
            "trainer.log_every_n_steps": 5,
        })
        parser.link_arguments("early_stopping.monitor", "checkpoint.monitor")

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyper-parameters right after parsing: a missing or foreign file is refused
        # first, in one line, instead of torch.load's traceback.
        if self.config.get("subcommand"):
            from pl_petune.preflight import check_ckpt_path

            check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    # ---- before the classes exist: seeds, monitor direction, run folder, resume ------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run = cfg.run
        guard = _GUARD[0]
        guard.setup_begins()
        from pl_petune.preflight import check_config

        check_config(cfg, self.subcommand or "fit")
        spec = _apply_protocol(cfg)
        if self.subcommand != "fit":
            if cfg.trainer.get("default_root_dir") is None:  # Lightning's default is ./lightning_logs
                cfg.trainer.default_root_dir = str(Path(run.out_dir) / "eval")
            return
        identity = _identity(cfg)
        key = run_key(identity)
        method = _method_name(cfg.model.class_path)
        run_dir = Path(run.out_dir) / spec.name / method / key
        if not run.rerun:
            store_path = Path(run.store or default_store_path())
            done = Store(store_path).get(key) if store_path.is_file() else None
            if done is not None and done.get("status") == "complete":
                raise AlreadyComplete(f"petune: run {key} is already complete in {store_path}: "
                                      f"{_summary_line(done)} (--run.rerun true trains it again)")
        guard.take_run(run_dir, key)
        cfg.trainer.default_root_dir = str(run_dir)
        cfg.checkpoint.dirpath = str(run_dir / "checkpoints")
        if cfg.trainer.logger in (None, True):
            cfg.trainer.logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                  "init_args": {"save_dir": str(run_dir), "name": "logs"}}
        last = guard.resume_file(run_dir / "checkpoints") if run.resume and cfg.get("ckpt_path") is None else None
        if last is not None:
            cfg.ckpt_path = str(last)
            print(f"petune: resuming run {key} from {last}", file=sys.stderr)
        self._run_info = {"key": key, "dir": run_dir, "method": method, "spec": spec, "identity": identity,
                          "resumed": cfg.get("ckpt_path") is not None}
        import lightning as L

        L.seed_everything(cfg.data.data_seed, workers=True, verbose=False)

    # ---- fit: start record, then test once and finish record ---------------------------------------------
    def before_fit(self) -> None:
        info = self._run_info
        info["t0"] = time.time()
        self.datamodule.split_sizes()  # a bad data file or an impossible split is refused before anything is written
        info["store"] = Store(self.config.fit.run.store or default_store_path())
        report = self.model.parameter_report()
        print(f"petune: {info['method']} on {info['spec'].name} [{self.datamodule.protocol}]: "
              f"{report['trainable_params']:,} trainable of {report['total_params']:,} "
              f"({report['trainable_percent']:.3f}%; denominator: {report['param_denominator']})", file=sys.stderr)
        self._save_state(self._record(status="running"))
        _ACTIVE.update(store=info["store"], key=info["key"], cli=self)
        _GUARD[0].training_begins()

    def _save_state(self, record: dict[str, Any]) -> None:
        """Put a running/interrupted ``record`` in the store and ``record.json``, except over a complete one: a
        rerun (``--run.rerun true``) replaces the complete record only with its own complete record."""
        info = self._run_info
        if info["store"].status(info["key"]) != "complete":
            info["store"].put(record)
        path = info["dir"] / "record.json"
        try:
            done = json.loads(path.read_text()).get("status") == "complete"
        except (OSError, ValueError):
            done = False
        if not done:
            write_json(path, record)

    def mark_interrupted(self, signal_name: str) -> Optional[str]:
        """Record the run as ``interrupted`` (resumable); returns the checkpoint a rerun resumes from."""
        info = self._run_info
        last = info["dir"] / "checkpoints" / "last.ckpt"
        record = self._record(status="interrupted")
        record["extra"]["interrupted"] = {"signal": signal_name, "epoch": self.trainer.current_epoch,
                                          "step": self.trainer.global_step,
                                          "resume_from": str(last) if last.is_file() else None}
        self._save_state(record)
        return str(last) if last.is_file() else None

    def after_fit(self) -> None:
        info = self._run_info
        trainer, dm = self.trainer, self.datamodule
        if trainer.interrupted:
            raise PetuneError("fit was interrupted; no test pass was run (rerun the same command to resume)")
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
        if not best:
            raise PetuneError(f"no best checkpoint was saved for monitor {ckpt_cb.monitor!r}; is it logged?")
        info["best"] = {"path": best, "sha256": file_sha256(best),
                        "score": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None}
        dev_metrics = self._best_dev_metrics()
        dm.unlock_heldout()
        results = trainer.test(self.model, datamodule=dm, ckpt_path=best, verbose=False)
        test_metrics = {k: float(v) for k, v in results[0].items()}
        baseline = dm.majority_baseline()
        record = self._record("complete", dev_metrics=dev_metrics, test_metrics=test_metrics, baseline=baseline)
        if dm.ood:  # the same best weights the test pass loaded, on each declared OOD set (docs/analyses.md)
            record["ood_metrics"], record["ood_sizes"] = evaluate_ood(self.model, dm)
            record["ood_sets"] = {n: {"task": o.task, "split": o.split, "label_map": dict(o.label_map)}
                                  for n, o in dm.ood.items()}
            print("petune: out-of-distribution " + ", ".join(f"{k} = {v:.4f}" for k, v in
                                                         record["ood_metrics"].items()))
        info["store"].put(record)
        write_json(info["dir"] / "record.json", record)
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if type(logger).__name__ == "WandbLogger" and exp is not None:
                log_record_to_wandb(exp, record)
                exp.finish()  # flush it; a later fit in this process starts its own W&B run
        _ACTIVE.clear()
        if not self.config.fit.run.keep_checkpoints:
            discard_checkpoints(info["dir"] / "checkpoints")
        self._print_summary(record)

    def _best_dev_metrics(self) -> dict[str, float]:
        """Dev metrics of the selected epoch, as logged at that epoch's validation."""
        return dict(self._dev_history.history.get(self._best_epoch(), {}))

    def instantiate_trainer(self, **kwargs: Any):
        guard = _GUARD[0]
        kwargs["plugins"] = guard.trainer_plugins(self._get(self.config_init, "trainer", default={}).get("plugins"))
        trainer = super().instantiate_trainer(**kwargs)
        self._dev_history = DevHistory()
        trainer.callbacks.extend([self._dev_history, guard.interrupts])
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "fit":  # validate/test: nothing more to check before Lightning runs
            _GUARD[0].training_begins()
        super()._run_subcommand(subcommand)

    def _record(self, status: str, dev_metrics: dict | None = None, test_metrics: dict | None = None,
                baseline: dict | None = None) -> dict[str, Any]:
        info, trainer, dm, model = self._run_info, self.trainer, self.datamodule, self.model
        cfg = self.config.fit
        spec = info["spec"]
        report = model.parameter_report()
        sizes = dm.split_sizes()
        seed_mode = "tied" if cfg.run.seed is not None else "separate"
        rec: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "run_key": info["key"], "status": status, "name": cfg.run.name,
            "task": spec.name, "benchmark": spec.benchmark, "band": spec.band, "method": info["method"],
            "model_class": cfg.model.class_path, "backbone": cfg.model.init_args.backbone,
            "protocol": dm.protocol, "leaky": dm.leaky,
            "init_seed": cfg.model.init_args.init_seed, "data_seed": cfg.data.data_seed, "seed_mode": seed_mode,
            "hparams": _drop_non_identity(_flat(_to_dict(cfg))),
            "identity": info["identity"], "primary_metric": spec.primary_metric.name,
            "higher_is_better": spec.primary_metric.higher_is_better,
            "monitor": cfg.early_stopping.monitor, "train_size": sizes.get("train"),
            "dev_size": sizes.get("dev"), "test_size": sizes.get("test"),
            **{k: report[k] for k in ("trainable_params", "total_params", "trainable_percent", "param_denominator")},
            "versions": versions(), "git_rev": git_revision(), "created_at": now_iso(),
            "run_dir": str(info["dir"]), "resumed": info["resumed"],
            "extra": self._extras(),
        }
        if status == "complete":
            ckpt_cb = trainer.checkpoint_callback
            rec.update({
                "best_dev": info["best"]["score"], "best_checkpoint_sha256": info["best"]["sha256"],
                "best_epoch": self._best_epoch(), "dev_metrics": dev_metrics or {},
                "test_metrics": test_metrics or {}, "epochs": trainer.current_epoch,
                "steps": trainer.global_step, "wall_time_s": round(time.time() - info["t0"], 2),
                "majority_baseline": baseline,
                "early_stopped": bool(getattr(trainer.early_stopping_callback, "stopped_epoch", 0)),
            })
            rec["extra"]["best_checkpoint"] = ckpt_cb.best_model_path
        return rec

    def _extras(self) -> dict[str, Any]:
        """What the module and callbacks add to the record (``record_extra()``: stage plans, solvers, ...)."""
        extra: dict[str, Any] = {}
        for obj in [self.model, *self.trainer.callbacks]:
            fn = getattr(obj, "record_extra", None)
            if callable(fn):
                extra.update(fn())
        return extra

    def _best_epoch(self) -> int | None:
        ckpt = self.trainer.checkpoint_callback
        import torch

        try:
            state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True, mmap=True)
            return int(state.get("epoch"))
        except Exception:
            return None

    def _print_summary(self, record: dict[str, Any]) -> None:
        print("petune: " + _summary_line(record))
        print(f"petune: record {record['run_key']} -> {record['run_dir']}/record.json")


def _summary_line(record: dict[str, Any]) -> str:
    """A complete record in one line: held-out scores against the majority class, selection, cost."""
    metric = record["primary_metric"]
    names = [metric] + [k.split("/", 1)[1] for k in record["test_metrics"]
                        if k.split("/", 1)[1] not in (metric, "loss")]
    scores = ", ".join(f"{n} = {record['test_metrics'][f'test/{n}']:.4f}" for n in names)
    line = f"{record['task']} {record['method']} [{record['protocol']}] held-out {scores}"
    base = record.get("majority_baseline")
    if base:
        line += " (majority-class baseline: " + ", ".join(f"{n} = {base[n]:.4f}" for n in names if n in base) + ")"
    return line + f"; best dev epoch {record['best_epoch']}, {record['epochs']} epochs, {record['wall_time_s']:.0f}s"


def log_record_to_wandb(run: Any, record: dict[str, Any]) -> None:
    """Put ``record`` into a W&B run's summary: its scalars flat (W&B's tables), and the whole record as JSON
    under ``petune/record`` (what ``petune report --wandb`` reads back)."""
    from pl_petune.wandb_source import SUMMARY_KEY, summary_value

    summary = {k: v for k, v in _flat(record).items() if isinstance(v, (int, float, str))}
    summary[SUMMARY_KEY] = summary_value(record)
    run.summary.update(summary)


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


def evaluate_ood(model: PetuneModule, dm: TaskDataModule) -> tuple[dict[str, float], dict[str, int]]:
    """Score ``model`` as it is (after the test pass: the best checkpoint) on every OOD set of ``dm``.

    Returns:
        ``{"ood/<name>/<metric>": value}`` with the training task's metrics over the mapped labels, and
        ``{name: number of examples}``.
    """
    import numpy as np
    import torch

    from pl_petune.metrics import score_predictions

    metrics: dict[str, float] = {}
    sizes: dict[str, int] = {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for name in dm.ood:
            preds, labels = [], []
            with torch.no_grad():
                for batch in dm.ood_dataloader(name):
                    batch = {k: v.to(device) for k, v in batch.items()}
                    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                    preds.append(model.predictions(logits).cpu().numpy())
                    labels.append(batch["labels"].cpu().numpy())
            scores = score_predictions(model.spec, np.concatenate(preds), np.concatenate(labels))
            metrics.update({f"ood/{name}/{k}": v for k, v in scores.items()})
            sizes[name] = int(sum(len(x) for x in labels))
    finally:
        model.train(was_training)
    return metrics, sizes


class DevHistory(Callback):
    """Keeps every epoch's ``dev/*`` metrics, so the record can give those of the selected epoch."""

    def __init__(self) -> None:
        self.history: dict[int, dict[str, float]] = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.history[trainer.current_epoch] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                               if k.startswith("dev/")}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): v for k, v in state_dict.get("history", {}).items()}


def _apply_protocol(cfg: Any):
    """Apply the tied seed and the monitor's direction to a parsed ``fit`` config; return the task spec."""
    run = cfg.run
    if run.seed is not None:
        cfg.data.data_seed = run.seed
        cfg.model.init_args.init_seed = run.seed
    from pl_petune.tasks import get_task

    spec = get_task(cfg.data.task)
    monitor = cfg.early_stopping.monitor
    if not monitor.startswith("dev/"):
        raise ConfigError(f"early_stopping.monitor {monitor!r} is not a development-split metric; allowed: "
                          "dev/loss, " + ", ".join(f"dev/{m.name}" for m in spec.metrics))
    try:
        higher = spec.direction(monitor)
    except KeyError as err:
        raise ConfigError(f"early_stopping.monitor {monitor!r} is never logged for task {spec.name}; logged: "
                          "dev/loss, " + ", ".join(f"dev/{m.name}" for m in spec.metrics)) from err
    cfg.early_stopping.mode = cfg.checkpoint.mode = "max" if higher else "min"
    return spec


# Keys that always identify a run, even at their default values.
ALWAYS_IDENTITY = ("model.class_path", "model.init_args.backbone", "model.init_args.init_seed", "model.init_args.lr",
                   "data.task", "data.protocol", "data.data_seed", "data.max_length", "data.batch_size",
                   "trainer.max_epochs", "early_stopping.monitor", "early_stopping.patience")
_DEFAULTS: dict[str, dict[str, Any]] = {}


def _defaults(class_path: str) -> dict[str, Any]:
    """The flattened default config of a ``fit`` run of ``class_path`` (cached)."""
    if class_path not in _DEFAULTS:
        _DEFAULTS[class_path] = _flat(_to_dict(parse_only(["fit", "--model.class_path", class_path])["fit"]))
    return _DEFAULTS[class_path]


def _identity(cfg: Any) -> dict[str, Any]:
    """The config keys that identify a run, flattened: those not in :data:`NON_IDENTITY` whose value differs
    from the default (plus :data:`ALWAYS_IDENTITY`).

    Leaving defaults out keeps a run's key stable when a later pl_petune adds an option with a default, so a
    sweep resumed after an upgrade still skips its finished runs.
    """
    flat = _flat(_to_dict(cfg))
    defaults = _defaults(flat["model.class_path"])
    return {k: v for k, v in _drop_non_identity(flat).items()
            if k in ALWAYS_IDENTITY or k not in defaults or defaults[k] != v}


def _drop_non_identity(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without the keys under :data:`NON_IDENTITY` (where a run writes, how it logs)."""
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in NON_IDENTITY)}


def run_key_for(argv: list[str], config: Any = None) -> str:
    """The run key ``petune <argv>`` would give its run, computed without building or training anything.

    Sweep runners use it to skip or claim a run before launching it. It applies the same rule as ``petune
    fit``: the tied seed, the monitor's direction, then a hash of every identifying config key.

    Args:
        argv: a ``fit --config <recipe> <overrides>`` argv, as given to ``petune``.
        config: the namespace :func:`parse_only` already returned for ``argv`` (saves parsing twice); it is
            modified in place as ``petune fit`` would modify it.

    Returns:
        The 16-hex run key, the last folder of ``<run.out_dir>/<task>/<method>/<key>/``.

    Raises:
        SystemExit: code 2, when ``argv`` does not parse (as the CLI would).
        ConfigError: the task or the monitor is unknown, or the subcommand is not ``fit``.
    """
    cfg = parse_only(argv) if config is None else config
    if cfg.get("subcommand") != "fit":
        raise ConfigError(f"run keys exist for 'fit' runs only, got subcommand {cfg.get('subcommand')!r}")
    fit = cfg["fit"]
    _apply_protocol(fit)
    return run_key(_identity(fit))


def _to_dict(ns: Any) -> dict[str, Any]:
    from jsonargparse import Namespace

    if isinstance(ns, Namespace):
        return {k: _to_dict(v) for k, v in vars(ns).items() if not k.startswith("__")}
    if isinstance(ns, (list, tuple)):
        return [_to_dict(v) for v in ns]  # type: ignore[return-value]
    if isinstance(ns, dict):  # e.g. data.ood: a dict of dataclass namespaces
        return {k: _to_dict(v) for k, v in ns.items()}
    return ns


def _method_name(class_path: str) -> str:
    """The registry name of the model class (its ``method_name``), else the class name."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return name or class_path
    return getattr(cls, "method_name", name)


def make_cli(argv: list[str], run: bool = True) -> PetuneCLI:
    from pl_petune.preflight import strict_yaml

    strict_yaml()
    return PetuneCLI(
        PetuneModule, TaskDataModule, subclass_mode_model=True, subclass_mode_data=False,
        seed_everything_default=False, args=argv, run=run, auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"}, parser_class=_Parser,
    )


class _ParseOnlyCLI(PetuneCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


# LightningCLI warns when given ``args`` while sys.argv has arguments too (``petune sweep ...`` parsing its runs);
# petune always passes the argv it means.
_ARGS_WARNING = ".*args parameter is intended to run from within Python.*"


def parse_only(argv: list[str]):
    """Parse (and type-check) a ``petune fit|validate|test ...`` argv without building anything.

    Returns the parsed config namespace. Raises ``SystemExit(2)`` on a parse error, as the CLI would.
    Used by sweep validation to prove every expanded run's command parses.
    """
    return parse_only_cli(argv).config


def parse_only_cli(argv: list[str]) -> PetuneCLI:
    """The CLI object :func:`parse_only` builds (its ``parser`` can then parse other argvs cheaply)."""
    from pl_petune.preflight import strict_yaml

    strict_yaml()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ARGS_WARNING)
        return _ParseOnlyCLI(
            PetuneModule, TaskDataModule, subclass_mode_model=True, subclass_mode_data=False,
            seed_everything_default=False, args=argv, auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "yaml"}, parser_class=_Parser,
        )


def _one_line(message: str) -> str:
    """Condense jsonargparse's nested error report to one line naming the bad key and value."""
    import re

    from pl_petune.methods import METHODS

    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    text = " ".join(lines)
    m = re.search(r"NestedArg\(key='class_path', val='([^']+)'\)", text)
    if m:
        known = ", ".join(f"pl_petune.methods.{c.__name__} ({n})" for n, c in sorted(METHODS.items()))
        return f"unknown method class {m.group(1)!r}; known: {known}"
    key = re.search(r'Parser key "([^"]+)"', text)
    nested = re.search(r"NestedArg\(key='([^']+)', val='([^']*)'\)", text)
    detail = next((ln.lstrip("- ") for ln in lines if ("Expected a" in ln or "not accepted" in ln
                   or "does not exist" in ln.lower()) and "NoneType" not in ln), "")
    where = key.group(1) if key else ""
    if nested and where:
        where = f"{where}.{nested.group(1)}" if not where.endswith(nested.group(1)) else where
    if where and detail:
        return f"{where}: {detail}"
    return lines[0] if len(lines) == 1 else (lines[0] + " " + detail).strip()


def run_lightning_cli(argv: list[str]) -> int:
    """Run ``petune fit|validate|test``; a user-fixable error prints one line and returns 2."""
    for var in ("TOKENIZERS_PARALLELISM",):
        os.environ.setdefault(var, "false")
    warnings.filterwarnings("ignore", message=_ARGS_WARNING)
    _ACTIVE.clear()
    guard = _GUARD[0] = RunGuard()
    try:
        from pl_petune.preflight import check_recipe_files

        check_recipe_files(argv[1:])
        with guard.interrupts:
            make_cli(argv)
    except AlreadyComplete as done:
        guard.close()
        print(done, file=sys.stderr)
        return 0
    except BaseException as err:
        guard.close()
        known = one_line(err)
        if known is None and isinstance(err, SystemExit):  # --help, --print_config
            return int(err.code or 0)
        line = _finish_active(err, known)
        if known is not None:
            print(f"petune {argv[0]}: {line or 'error: ' + known[0]}", file=sys.stderr)
            return known[1]
        raise
    finally:
        guard.close()
        _ACTIVE.clear()
    return 0


def _finish_active(err: BaseException, known: Optional[tuple[str, int]]) -> Optional[str]:
    """Mark the run this process recorded as started: ``interrupted`` after a signal (a rerun resumes), else
    ``failed``. Returns the interrupt's one line (None otherwise)."""
    from pl_petune.signals import interrupt_of

    stop = interrupt_of(err)
    if not _ACTIVE:
        return f"{stop}; nothing was recorded yet, rerun the same command" if stop is not None else None
    try:
        if stop is not None:
            resume = _ACTIVE["cli"].mark_interrupted(stop.name)
            where = f"resumes from {resume}" if resume else "starts over (no checkpoint yet)"
            return (f"{stop}; run {_ACTIVE['key']} is marked interrupted: rerun the same command and it {where}")
        _ACTIVE["store"].mark_failed(_ACTIVE["key"], f"{type(err).__name__}: {err}")
    except Exception:  # the disk that just filled up may not take the mark either; the error line says why
        if known is None:
            raise
    return None
