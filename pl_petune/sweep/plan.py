"""Planning a sweep: every run expanded, rendered, parsed with the real ``petune fit`` parser and keyed.

Nothing trains here. A misspelled key or a value of the wrong type fails the whole sweep at once, naming the
run and the key; every swept key must reach the parsed config with its value (F8: no silent defaults); the
metric must be logged by every task of the sweep with the goal matching its direction.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from pl_petune.sweep.command import check_command_order, command_args, fit_argv, render_command
from pl_petune.sweep.expand import covering, expand
from pl_petune.sweep.spec import SweepError


def logged_metrics(tasks: Iterable[str]) -> dict[str, bool]:
    """Metric names every one of ``tasks`` logs, mapped to True when higher is better."""
    from pl_petune.tasks import get_task

    common: Optional[dict[str, bool]] = None
    for task in tasks:
        spec = get_task(task)
        names = {"train/loss": False, "dev/loss": False, "test/loss": False}
        for m in spec.metrics:
            names[f"dev/{m.name}"] = names[f"test/{m.name}"] = m.higher_is_better
        common = names if common is None else {k: v for k, v in common.items() if k in names}
    return common or {}


def check_metric(sweep: Mapping[str, Any], tasks: Iterable[str], where: str = "sweep") -> None:
    """The metric must be logged by the modules for every task of the sweep, and its goal match its direction."""
    metric = sweep.get("metric")
    if metric is None:
        return
    tasks = sorted(set(tasks))
    logged = logged_metrics(tasks)
    name = metric["name"]
    if name not in logged:
        raise SweepError(f"{where}: metric {name!r} is not logged by every task of the sweep ({', '.join(tasks)}); "
                         f"logged by all: {', '.join(sorted(logged))}")
    goal = "maximize" if logged[name] else "minimize"
    if metric.get("goal", "minimize") != goal:
        raise SweepError(f"{where}: metric {name!r} is {'higher' if logged[name] else 'lower'}-is-better; "
                         f"its goal must be {goal!r}, not {metric.get('goal', 'minimize')!r}")


class FitParser:
    """The real ``petune fit`` parser, built once and reused (a sweep parses every run's argv).

    Errors come back as one line instead of the parser's usage text.
    """

    def __init__(self) -> None:
        from pl_petune.lightning_cli import parse_only_cli

        # Built once, as parse_only builds it: parsing then costs ~40 ms per run instead of ~300 ms.
        with _quiet():
            cli = parse_only_cli(["fit", "--model=pl_petune.methods.FullFinetune"])
        self.parser = cli.parser
        for p in [self.parser, *getattr(getattr(self.parser, "_subcommands_action", None), "_name_parser_map",
                                        {}).values()]:
            p.exit_on_error = False

    def parse(self, argv: Sequence[str]):
        """The parsed namespace of a ``fit ...`` argv.

        Raises:
            SweepError: the argv does not parse (unknown key, wrong type, missing recipe), in one line.
        """
        from pl_petune.arg_errors import condense
        from pl_petune.packaged import resolve_configs

        try:
            with _quiet():  # recipes resolve as `python -m pl_petune` resolves them (packaged, from any folder)
                return self.parser.parse_args(resolve_configs(argv))
        except SystemExit:
            raise SweepError("does not parse (see the parser's message above)") from None
        except Exception as err:  # jsonargparse's ArgumentError, or a PetuneError already condensed to one line
            raise SweepError(condense(str(err))[:600]) from None


class _quiet:
    """Silence stderr (the parser's usage text, library warnings) for a block."""

    def __enter__(self):
        import io

        self._old, sys.stderr = sys.stderr, io.StringIO()
        return self

    def __exit__(self, *exc):
        captured, sys.stderr = sys.stderr.getvalue(), self._old
        self.captured = captured
        return False


@dataclass
class PlannedRun:
    """One run of a sweep: its place in the sweep, config, command and run key."""

    index: int
    config: dict[str, Any]
    command: list[str]
    key: str = ""
    task: str = ""
    method: str = ""
    run_dir: str = ""
    protocol: str = ""

    def spec(self, sweep_name: str) -> dict[str, Any]:
        """What the store keeps of the run's place in its sweep (``petune runs`` shows it)."""
        return {"sweep": sweep_name, "index": self.index, "config": self.config, "command": self.command,
                "task": self.task, "method": self.method, "run_dir": self.run_dir, "protocol": self.protocol}


def plan(sweep: Mapping[str, Any], count: Optional[int] = None, seed: int = 0, where: str = "sweep",
         parser: Optional[FitParser] = None, json_dir: Optional[Path] = None,
         quick: bool = False) -> list[PlannedRun]:
    """Expand, render and check every run of a sweep, and compute its run key; nothing is trained.

    Checks: the command's order (``fit --config <recipe> <overrides>``), that every run's argv parses with
    the CLI and that every swept key landed with the value the sweep gave, and that the metric is logged by
    every task of the sweep with the goal matching its direction.

    ``quick``: plan only the :func:`covering` runs (a check that every value parses; nothing to run).

    Raises:
        SweepError: naming the first bad run (index and parameters) and why.
    """
    from pl_petune.errors import PetuneError
    from pl_petune.identity import method_name as _method_name
    from pl_petune.identity import run_key_for
    from pl_petune.tasks import get_task

    parser = parser or FitParser()
    configs = expand(sweep, count=count, seed=seed)
    indices = covering(configs) if quick else range(len(configs))
    runs: list[PlannedRun] = []
    for i in indices:
        config = configs[i]
        json_file = str(json_dir / f"run-{i:05d}.json") if json_dir else None
        command = render_command(sweep, config, json_file=json_file, interpreter=sys.executable)
        check_command_order(command)
        argv = fit_argv(command)
        label = f"{where}: run {i} ({_short(config)})"
        try:
            cfg = parser.parse(argv)
        except SweepError as err:
            raise SweepError(f"{label}: {err}") from None
        _check_landed(cfg["fit"], config, label)
        try:
            key = run_key_for(argv, config=cfg)
        except PetuneError as err:
            raise SweepError(f"{label}: {err}") from None
        fit = cfg["fit"]
        task, method = get_task(fit.data.task).name, _method_name(fit.model.class_path)
        # where `petune fit` will put the run folder (relative out_dir: the runner's working directory)
        run_dir = Path(fit.run.out_dir).resolve() / task / method / key
        runs.append(PlannedRun(i, config, command, key, task, method, str(run_dir), str(fit.data.protocol)))
    check_metric(sweep, {r.task for r in runs}, where)
    return runs


def _check_landed(fit: Any, config: Mapping[str, Any], label: str) -> None:
    """Every dotted sweep key must be in the parsed config with the sweep's value (F8: no silent defaults)."""
    for key, value in config.items():
        if key == "config" or isinstance(value, Mapping):
            continue
        try:
            got = fit[key]
        except (KeyError, AttributeError):
            raise SweepError(f"{label}: key {key!r} did not reach the config") from None
        want = value
        if isinstance(got, tuple):
            got = list(got)
        if (key.startswith("trainer.") and type(want) is int and type(got) is float):
            # Lightning's int-or-float options: 1 is one batch, 1.0 all of them (an integer must stay one)
            same = False
        elif isinstance(got, (int, float)) and not isinstance(got, bool) and not isinstance(want, bool):
            try:  # PyYAML reads 1e-5 (no dot) as a string; the CLI turns it into a number
                same = float(got) == float(want)
            except (TypeError, ValueError):
                same = False
        elif hasattr(got, "class_path"):
            same = got.class_path == want or got.class_path.rsplit(".", 1)[-1] == str(want)
        else:
            same = got == want or str(got) == str(want)
        if not same:
            raise SweepError(f"{label}: key {key!r} was given {want!r} but the parsed config holds {got!r}")


def _short(config: Mapping[str, Any], width: int = 160) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(config.items()))
    return text if len(text) <= width else text[: width - 3] + "..."


def sweep_name(sweep: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The sweep's ``name``, else its file's stem; used for its folder and in each claim."""
    name = str(sweep.get("name") or Path(path).stem)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def seed_major(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """Runs reordered so every other combination runs for one seed before any runs for the next (F14)."""
    def rank(run: PlannedRun) -> tuple:
        return tuple(str(v) for k, v in sorted(run.config.items()) if k.split(".")[-1].endswith("seed"))
    order: dict[tuple, int] = {}
    for run in runs:
        order.setdefault(rank(run), len(order))
    return sorted(runs, key=lambda run: order[rank(run)])


def save_plan(sweep: Mapping[str, Any], source: Path, runs: Sequence[PlannedRun], folder: Path, name: str) -> Path:
    """Keep the sweep file and its expansion (``runs.jsonl``) next to the store: the sweep's own record.

    Both are written atomically, so a reader (``petune runs``, a SLURM task) sees the old plan or the new one.
    """
    from pl_petune.records import atomic_write_text

    atomic_write_text(folder / "sweep.yaml", Path(source).read_text(encoding="utf-8"))
    atomic_write_text(folder / "runs.jsonl", "".join(json.dumps({**r.spec(name), "run_key": r.key}, default=str)
                                                     + "\n" for r in runs))
    return folder / "runs.jsonl"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (``0 <= i < n``) as ``(i, n)``.

    Raises:
        SweepError: anything else, naming the value.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise SweepError(f"--shard {text!r}: give i/n with 0 <= i < n, e.g. 0/2 and 1/2 on two nodes")
    return int(m.group(1)), int(m.group(2))


def shard(runs: Sequence[PlannedRun], i: int, n: int) -> list[PlannedRun]:
    """The runs of shard ``i`` of ``n``: with the distinct run keys sorted, every ``n``-th from the ``i``-th.

    It depends on the set of run keys only, not on ``--order``, so every node computes the same split from the
    same file and options; the shards differ in size by at most one run, and together hold every run once.
    """
    rank = {k: j for j, k in enumerate(sorted({r.key for r in runs}))}
    return [r for r in runs if rank[r.key] % n == i]


__all__ = ["FitParser", "PlannedRun", "plan", "logged_metrics", "check_metric", "sweep_name", "seed_major",
           "save_plan", "parse_shard", "shard", "command_args"]
