"""``petune sweep``: W&B sweep files, run offline by N worker processes, per node (``--shard``) or on SLURM.

A sweep file in ``sweeps/`` is a W&B sweep configuration: ``wandb sweep`` + ``wandb agent`` run it online, and
``petune sweep <file>`` runs the same file offline with W&B's semantics. The parts, each its own module:

- :mod:`~pl_petune.sweep.spec`: the file's structure, checked against W&B's sweep schema.
- :mod:`~pl_petune.sweep.expand`: grid and random expansion, W&B's order and distributions.
- :mod:`~pl_petune.sweep.command`: the run commands, macros rendered as ``wandb agent`` renders them.
- :mod:`~pl_petune.sweep.plan`: every run parsed with the real ``petune fit`` parser and keyed; shards.
- :mod:`~pl_petune.sweep.runner` and :mod:`~pl_petune.sweep.claims`: the local runner (store and run-folder
  claims, heartbeats, children that die with it).
- :mod:`~pl_petune.sweep.slurm`: one SLURM job array per submission.
- :mod:`~pl_petune.sweep.cli`: the ``petune sweep`` command.

``petune runs`` lives beside the store, in :mod:`pl_petune.runs`; it is re-exported here as ``runs_main``.
"""

from __future__ import annotations

from typing import Any

from pl_petune.sweep.command import check_command_order, command_args, fit_argv, render_command
from pl_petune.sweep.expand import MAX_RUNS, covering, expand, grid_size
from pl_petune.sweep.plan import (
    FitParser,
    PlannedRun,
    check_metric,
    logged_metrics,
    parse_shard,
    plan,
    save_plan,
    seed_major,
    shard,
    sweep_name,
)
from pl_petune.sweep.runner import Outcome, Runner
from pl_petune.sweep.spec import Param, SweepError, online_only, parse_parameters, validate_sweep

# isort: split
# spec must be fully imported before files and cli: it re-exports files' readers at its end (a cycle otherwise).
from pl_petune.sweep.cli import build_parser, main
from pl_petune.sweep.files import load_sweep, sweep_path


def __getattr__(name: str) -> Any:
    # pl_petune.runs imports this package's cli; importing it lazily keeps the two free of a cycle.
    if name in ("runs_main", "runs_table"):
        from pl_petune import runs

        return getattr(runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SweepError", "Param", "parse_parameters", "expand", "covering", "grid_size", "MAX_RUNS", "command_args",
           "render_command", "fit_argv", "check_command_order", "load_sweep", "sweep_path", "validate_sweep",
           "online_only",
           "check_metric", "logged_metrics", "FitParser", "PlannedRun", "plan", "save_plan", "seed_major", "shard",
           "parse_shard", "sweep_name", "Runner", "Outcome", "build_parser", "main", "runs_main", "runs_table"]
