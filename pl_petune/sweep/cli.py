"""``petune sweep FILE``: check a W&B sweep file, then run it here, on a shard of it, or as a SLURM array.

Every option is checked before the file is read, and the file before anything is written: a refusal is one
line (exit 2) and leaves no plan, log or store behind.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from pl_petune.sweep.files import load_sweep, sweep_path
from pl_petune.sweep.plan import PlannedRun, _short, parse_shard, plan, save_plan, seed_major, shard, sweep_name
from pl_petune.sweep.spec import SweepError, online_only


class ArgParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (a :class:`SweepError`, exit 2) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise SweepError(f"{message} (see {self.prog} --help)")


def build_parser() -> ArgParser:
    """The ``petune sweep`` options."""
    p = ArgParser(
        prog="petune sweep",
        description="Run a W&B sweep file offline: N runs at once, each `petune fit` in its own process, all "
                    "recorded in run folders and a results store; rerunning skips complete runs and retries "
                    "failed ones. --shard i/n splits it over nodes; --slurm submits it as one SLURM job array.")
    p.add_argument("sweep", help="the sweep YAML (W&B format), e.g. sweeps/smoke.yaml")
    p.add_argument("--workers", type=int, default=None, help="runs at once (default: one per device, else 1)")
    p.add_argument("--devices", default=None,
                   help="comma-separated device ids; each worker pins CUDA_VISIBLE_DEVICES to one, round robin")
    p.add_argument("--store", default=None, help="results store (default: $PETUNE_STORE or runs/results.sqlite)")
    p.add_argument("--retries", type=int, default=2,
                   help="retry a failed or killed run up to this many times over reruns (default 2)")
    p.add_argument("--count", type=int, default=None, help="random sweeps: how many runs to draw (default run_cap)")
    p.add_argument("--seed", type=int, default=0, help="random sweeps: seed of the draws (default 0)")
    p.add_argument("--order", choices=("sweep", "seed_major", "shuffled"), default="sweep",
                   help="launch order: the sweep's (W&B's), seed_major (one seed for all cells before the next), "
                        "or shuffled by --seed")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (0 <= I < N): start one runner per node with 0/N .. N-1/N")
    p.add_argument("--fill-from-wandb", default=None, metavar="ENTITY/PROJECT/SWEEP_ID",
                   help="run only the runs this online W&B sweep has no complete record of (its crashed, failed "
                        "or never-run grid points)")
    p.add_argument("--check", action="store_true", help="validate and expand only: print the runs, train nothing")
    p.add_argument("--quick", action="store_true",
                   help="with --check: parse only a covering subset (every value of every parameter once)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished run only)")
    p.add_argument("--chunk", type=int, default=None, help="with --slurm: runs per array task (default 1)")
    p.add_argument("--max-parallel", type=int, default=None,
                   help="with --slurm: array tasks running at once (the array's %%N limit)")
    p.add_argument("--slurm", nargs=argparse.REMAINDER, default=None, metavar="SBATCH_OPTION",
                   help="submit one SLURM job array instead of running here; everything after --slurm goes to "
                        "sbatch (e.g. --slurm --partition gpu --gres gpu:1 --time 2:00:00); give it last")
    return p


def _check_options(args: argparse.Namespace) -> tuple[list[str], int, Optional[tuple[int, int]]]:
    """Every option on its own and together, before the sweep file is read."""
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else []
    if args.devices is not None and not devices:
        raise SweepError(f"--devices {args.devices!r} names no device; give ids like 0,1")
    workers = args.workers if args.workers is not None else max(1, len(devices))
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    if args.retries < 0:
        raise SweepError(f"--retries must be >= 0, got {args.retries}")
    if args.count is not None and args.count < 1:
        raise SweepError(f"--count must be >= 1 run, got {args.count}")
    if args.quick and not args.check:
        raise SweepError("--quick only applies to --check (a run needs every command checked)")
    shard_of = parse_shard(args.shard) if args.shard is not None else None
    if args.fill_from_wandb is not None:
        from pl_petune.wandb_source import _parse_path

        _parse_path(args.fill_from_wandb)  # a malformed path is refused before the file is read
    if args.slurm is None and (args.chunk is not None or args.max_parallel is not None):
        raise SweepError("--chunk and --max-parallel apply to --slurm; put them before --slurm")
    if args.slurm is not None:
        if args.workers is not None or args.devices is not None or shard_of is not None:
            raise SweepError("--slurm schedules the runs itself: drop --workers, --devices and --shard (ask sbatch "
                             "for GPUs, e.g. --slurm --gres gpu:1)")
        if args.chunk is not None and args.chunk < 1:
            raise SweepError(f"--chunk must be >= 1 run per array task, got {args.chunk}")
        if args.max_parallel is not None and args.max_parallel < 1:
            raise SweepError(f"--max-parallel must be >= 1, got {args.max_parallel}")
        from pl_petune.sweep.slurm import _tool

        _tool("sbatch")  # no SLURM here: refused before the file is read or a plan written
    return devices, workers, shard_of


def _fill_from_wandb(runs: list[PlannedRun], path: str) -> list[PlannedRun]:
    from pl_petune.wandb_source import records_from_wandb

    records, _ = records_from_wandb(path)
    online = {r["run_key"] for r in records}
    holes = [r for r in runs if r.key not in online]
    print(f"petune sweep: W&B {path}: {len(runs) - len(holes)} of {len(runs)} runs complete online; "
          f"{len(holes)} left to fill", file=sys.stderr)
    return holes


def main(argv: Optional[list[str]] = None) -> int:
    """``petune sweep``: see :func:`build_parser`. Returns 0 when every run (of the shard) is complete."""
    from pl_petune.store import default_store_path

    args = build_parser().parse_args(argv)
    devices, workers, shard_of = _check_options(args)
    source = sweep_path(args.sweep)
    sweep = load_sweep(source)
    if sweep.get("method") == "grid" and args.count is not None:
        raise SweepError("--count applies to random sweeps; a grid runs every point (cut it with run_cap)")
    for line in online_only(sweep):
        print(f"petune sweep: {args.sweep}: {line}", file=sys.stderr)
    name = sweep_name(sweep, source)
    store = Path(args.store or default_store_path()).resolve()
    if store.is_dir():
        raise SweepError(f"--store {str(store)!r} is a folder; give the path of a .sqlite file")
    blocked = next((p for p in store.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise SweepError(f"--store {str(store)!r}: {str(blocked)!r} is a file, not a folder; choose another path")
    folder = store.parent / "sweeps" / name
    runs = plan(sweep, count=args.count, seed=args.seed, where=args.sweep, json_dir=folder / "args", quick=args.quick)
    unique: dict[str, PlannedRun] = {}
    for run in runs:
        unique.setdefault(run.key, run)
    if len(unique) < len(runs):
        print(f"petune sweep: {len(runs)} runs are {len(unique)} distinct runs (same run key); each runs once",
              file=sys.stderr)
    ordered = list(unique.values())
    if args.order == "seed_major":
        ordered = seed_major(ordered)
    elif args.order == "shuffled":
        random.Random(args.seed).shuffle(ordered)
    if shard_of is not None:
        ordered = shard(ordered, *shard_of)
    if args.fill_from_wandb:
        ordered = _fill_from_wandb(ordered, args.fill_from_wandb)
    if args.check:
        return _print_check(ordered, name, shard_of)
    try:
        save_plan(sweep, source, runs, folder, name)
    except OSError as err:
        raise SweepError(f"cannot write the sweep's plan to {str(folder)!r} ({err.strerror or err}); choose "
                         "another --store") from None
    if args.slurm is not None:
        return _submit(ordered, folder, name, store, args)
    return _run_here(ordered, store, folder, name, workers, devices, args, shard_of)


def _print_check(ordered: list[PlannedRun], name: str, shard_of: Optional[tuple[int, int]]) -> int:
    varying = {k for run in ordered for k in run.config if run.config[k] != ordered[0].config.get(k)}
    for run in ordered:
        shown = {k: v for k, v in run.config.items() if k in varying}
        print(f"{run.index:5d} {run.key} {run.task:8s} {run.method:12s} {_short(shown, 120)}")
    part = f" in shard {shard_of[0]}/{shard_of[1]}" if shard_of else ""
    print(f"petune sweep: {name}: {len(ordered)} runs{part}; every command parses", file=sys.stderr)
    return 0


def _submit(ordered: list[PlannedRun], folder: Path, name: str, store: Path, args: Any) -> int:
    from pl_petune.sweep import slurm
    from pl_petune.sweep.runner import Runner

    index = Runner([], store, name, progress=False, log_dir=folder / "logs")
    job, counts = slurm.submit(ordered, folder, name, args.slurm, chunk=args.chunk or 1,
                               max_parallel=args.max_parallel, is_complete=index.is_complete)
    slurm.say_submitted(name, job, counts, folder)
    return 0


def _run_here(ordered: list[PlannedRun], store: Path, folder: Path, name: str, workers: int, devices: list[str],
              args: Any, shard_of: Optional[tuple[int, int]]) -> int:
    from pl_petune.sweep.runner import Runner

    part = f" (shard {shard_of[0]}/{shard_of[1]})" if shard_of else ""
    print(f"petune sweep: {name}{part}: {len(ordered)} runs, {workers} worker(s)"
          + (f" on devices {','.join(devices)}" if devices else "") + f"; store {store}; logs {folder / 'logs'}",
          file=sys.stderr)
    runner = Runner(ordered, store, name, workers=workers, devices=devices, retries=args.retries,
                    log_dir=folder / "logs", progress=not args.no_progress)
    out = runner.run()
    complete = sum(1 for r in ordered if runner.store.status(r.key) == "complete")
    print(f"petune sweep: {name}{part}: {complete}/{len(ordered)} complete; this invocation ran {len(out.complete)}, "
          f"{len(out.failed)} failed"
          + (", interrupted (rerun the same command to continue)" if out.interrupted else "")
          + (f", stopped: {out.aborted} (fix that, then rerun the same command)" if out.aborted else ""),
          file=sys.stderr)
    if out.aborted:
        return 1
    if out.interrupted:
        return 130
    return 0 if complete == len(ordered) else 1


__all__ = ["ArgParser", "build_parser", "main"]
