"""``petune fit|validate|test``: Lightning's CLI with the fair protocol built in.

``petune fit`` = early stopping and checkpointing on the development split → one test pass on the
held-out split with the best checkpoint → a run record in the results store (and the W&B summary when a
W&B logger is configured). The CLI only wires: it links the task's facts from ``data.task`` to
``model.init_args.task`` and the backbone's name to the data module's tokenizer (so data and methods never
import each other), sets the protocol's defaults, chooses the run folder, and runs the one test pass after
fit. What identifies a run is :mod:`pl_petune.identity`; what the ``run.*`` options mean (the skip of a
complete run, what ``petune test`` may score) is :mod:`pl_petune.run_policy`; the record is written by the
:class:`~pl_petune.recorder.RunRecorder` callback it adds to the trainer.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from pl_petune.arg_errors import ArgumentsError, CondensingParser, condense
from pl_petune.data.module import TaskDataModule, check_data_files
from pl_petune.errors import PetuneError
from pl_petune.faults import RunGuard, one_line
from pl_petune.identity import (
    ALWAYS_IDENTITY,
    NON_IDENTITY,
    apply_protocol,
    hparams,
    identity,
    method_name,
    run_key_for,
    to_dict,
)
from pl_petune.methods import PetuneModule
from pl_petune.record_build import log_record_to_wandb, summary_line
from pl_petune.recorder import HeadlineSpec, RunRecorder, discard_checkpoints
from pl_petune.records import run_key
from pl_petune.run_policy import AlreadyComplete, check_not_complete, heldout_permission, refuse_overwritten

# The run policy, run_key_for, RunRecorder, ... are re-exported: earlier code imports them from here.
__all__ = ["PetuneCLI", "make_cli", "parse_only", "parse_only_cli", "run_lightning_cli", "RunOptions",
           "AlreadyComplete", "refuse_overwritten", "heldout_permission", "run_key_for", "NON_IDENTITY",
           "ALWAYS_IDENTITY", "ArgumentsError", "RunRecorder", "discard_checkpoints", "log_record_to_wandb",
           "condense"]


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
        allow_leaky_test: ``petune test`` only: score the held-out split with a checkpoint that is not the
            recorded best-on-dev checkpoint of a complete run (any checkpoint, no completed fit). The output
            says ``leaky``; such scores are not held-out results (docs/protocol.md).
        save_predictions: write the held-out pass's per-example predictions (and each OOD set's) beside
            ``record.json``, named in the record with their SHA-256 (docs/reports.md).
        keep_optimizer_state: with ``keep_checkpoints``, keep the optimizer and scheduler state in the kept
            files (by default they hold what evaluation needs: weights, hyper-parameters, callbacks' state).
        headline: the metric the study reports for the run's task, ``TASK=METRIC`` pairs or a preset
            (``revisiting``, ``modulewise``); recorded, and used by ``petune report`` (docs/reports.md).
    """

    seed: Optional[int] = None
    out_dir: str = "runs"
    store: Optional[str] = None
    resume: bool = True
    keep_checkpoints: bool = False
    name: Optional[str] = None
    rerun: bool = False
    allow_leaky_test: bool = False
    save_predictions: bool = False
    keep_optimizer_state: bool = False
    headline: Optional[HeadlineSpec] = None


# Fault handling of the command being run (lock, held output, signal guard); run_lightning_cli replaces it.
_GUARD: list[RunGuard] = [RunGuard(hold_output=False)]


class PetuneCLI(LightningCLI):
    """The Lightning CLI, plus the protocol: dev-only stopping, one test pass, a run record."""

    _run_info: Optional[dict[str, Any]] = None
    recorder: Optional[RunRecorder] = None

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
            from pl_petune.preflight import check_ckpt_path, check_seed

            sub = self.config[self.config.subcommand]
            check_ckpt_path(sub.get("ckpt_path"))
            seed = sub.get("seed_everything")
            check_seed("seed_everything", None if isinstance(seed, bool) else seed)  # seeded right after this
        super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        if self.subcommand == "fit":  # refused before Lightning seeds (and logs) anything
            refuse_overwritten(self.config.fit)
        super()._set_seed()

    # ---- before the classes exist: seeds, monitor direction, run folder, resume ------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run = cfg.run
        guard = _GUARD[0]
        guard.setup_begins()
        from pl_petune.preflight import check_config

        check_config(cfg, self.subcommand or "fit")
        spec = apply_protocol(cfg)
        check_data_files(cfg.data.task, cfg.data.data_dir, to_dict(cfg.data.ood) if cfg.data.ood else None)
        if self.subcommand != "fit":
            if cfg.trainer.get("default_root_dir") is None:  # Lightning's default is ./lightning_logs
                cfg.trainer.default_root_dir = str(Path(run.out_dir) / "eval")
            if self.subcommand == "test":
                self._heldout = heldout_permission(cfg)
            return
        ident = identity(cfg)
        key = run_key(ident)
        method = method_name(cfg.model.class_path)
        run_dir = Path(run.out_dir) / spec.name / method / key
        check_not_complete(run, key, run_dir)
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
        self._run_info = {"key": key, "dir": run_dir, "method": method, "spec": spec, "identity": ident,
                          "resumed": cfg.get("ckpt_path") is not None}
        import lightning as L

        L.seed_everything(cfg.data.data_seed, workers=True, verbose=False)

    def instantiate_trainer(self, **kwargs: Any):
        guard = _GUARD[0]
        kwargs["plugins"] = guard.trainer_plugins(self._get(self.config_init, "trainer", default={}).get("plugins"))
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(guard.interrupts)  # type: ignore[attr-defined]
        info = self._run_info
        if self.subcommand == "fit" and info is not None:
            cfg = self.config.fit
            self.recorder = RunRecorder(
                out_dir=cfg.run.out_dir, store=cfg.run.store, keep_checkpoints=cfg.run.keep_checkpoints,
                name=cfg.run.name, run_key=info["key"], run_dir=str(info["dir"]), identity=info["identity"],
                hparams=hparams(cfg), model_class=cfg.model.class_path,
                seed_mode="tied" if cfg.run.seed is not None else "separate", resumed=info["resumed"],
                save_predictions=cfg.run.save_predictions, keep_optimizer_state=cfg.run.keep_optimizer_state,
                headline=cfg.run.headline)
            trainer.callbacks.append(self.recorder)  # type: ignore[attr-defined]
        return trainer

    # ---- fit, then the one test pass with the best checkpoint -----------------------------------------
    def before_fit(self) -> None:
        info = self._run_info
        assert info is not None
        self.datamodule.split_sizes()  # a bad data file or an impossible split is refused before anything is written
        _GUARD[0].training_begins()
        report = self.model.parameter_report()
        print(f"petune: {info['method']} on {info['spec'].name} [{self.datamodule.protocol}]: "
              f"{report['trainable_params']:,} trainable of {report['total_params']:,} "
              f"({report['trainable_percent']:.3f}%; denominator: {report['param_denominator']})", file=sys.stderr)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            raise PetuneError("fit was interrupted; no test pass was run (rerun the same command to resume)")
        ckpt_cb = trainer.checkpoint_callback
        if ckpt_cb is None or not ckpt_cb.best_model_path:  # type: ignore[attr-defined]
            raise PetuneError(f"no best checkpoint was saved for monitor {getattr(ckpt_cb, 'monitor', None)!r}; "
                              "is it logged?")
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best", verbose=False)
        record = self.recorder.record if self.recorder is not None else None
        if record is None or record.get("status") != "complete":
            raise PetuneError("the test pass ended without completing the run record")
        if "ood_metrics" in record:
            print("petune: out-of-distribution " + ", ".join(f"{k} = {v:.4f}" for k, v in
                                                         record["ood_metrics"].items()))
        print("petune: " + summary_line(record))
        print(f"petune: record {record['run_key']} -> {record['run_dir']}/record.json")

    # ---- petune test: the recorded held-out pass again, or a pass the user marked leaky ------------------
    def before_test(self) -> None:
        permission = getattr(self, "_heldout", None)
        if permission == "leaky":
            self.datamodule.allow_leaky_test()
            print("petune test: leaky: run.allow_leaky_test is set; these test scores are not a held-out result",
                  file=sys.stderr)
        elif permission is not None:
            self.datamodule.permit_heldout_pass(permission)

    def after_test(self) -> None:
        if getattr(self, "_heldout", None) == "leaky":
            print("petune test: leaky: the scores above are not held-out results (run.allow_leaky_test)")
        elif self.datamodule.leaky:
            print(f"petune test: leaky: protocol {self.datamodule.protocol!r} selects on the split it reports")

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "fit":  # validate/test: nothing more to check before Lightning runs
            _GUARD[0].training_begins()
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:  # errors outside the trainer's own calls too (no best checkpoint, ...)
            if self.recorder is not None:
                self.recorder.fail(err)
            raise


def make_cli(argv: list[str], run: bool = True) -> PetuneCLI:
    """The ``petune`` Lightning CLI for ``argv`` (``fit|validate|test ...``); ``run=False`` only instantiates."""
    from pl_petune.preflight import strict_yaml

    strict_yaml()
    return PetuneCLI(
        PetuneModule, TaskDataModule, subclass_mode_model=True, subclass_mode_data=False,
        seed_everything_default=False, args=argv, run=run, auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"}, parser_class=CondensingParser,
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
    """The CLI object :func:`parse_only` builds (its ``parser`` can then parse other argvs cheaply).

    Raises:
        ConfigError: half of a base + method recipe given alone (:func:`pl_petune.packaged.check_layers`).
    """
    from pl_petune.packaged import check_layers
    from pl_petune.preflight import strict_yaml

    check_layers(argv)  # else a lone method file would parse, silently, on the parser's defaults
    strict_yaml()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ARGS_WARNING)
        return _ParseOnlyCLI(
            PetuneModule, TaskDataModule, subclass_mode_model=True, subclass_mode_data=False,
            seed_everything_default=False, args=argv, auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "yaml"}, parser_class=CondensingParser,
        )


def run_lightning_cli(argv: list[str]) -> int:
    """Run ``petune fit|validate|test``; a user-fixable error prints one line and returns 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=_ARGS_WARNING)
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
        if known is not None:
            print(f"petune {argv[0]}: {guard.interrupt_line(err) or 'error: ' + known[0]}", file=sys.stderr)
            return known[1]
        raise
    finally:
        guard.close()
        _GUARD[0] = RunGuard(hold_output=False)
    return 0
