"""``petune sweep`` and ``petune runs``: W&B sweep files, run offline by N worker processes into one store.

A sweep file in ``sweeps/`` is a W&B sweep configuration: ``wandb sweep`` + ``wandb agent`` run it online,
and ``petune sweep <file> --workers N [--devices 0,1]`` runs the same file offline with W&B's semantics:

- **Expansion** (grid: the cartesian product of every ``values`` list, ``value`` constants and nested
  ``parameters``; random: ``run_cap`` or ``--count`` draws from a seeded generator). Parameters are taken in
  sorted name order, at every nesting level, and the last one varies fastest: the order of W&B's engine
  (the open-source ``sweeps`` package, ``grid_search_next_runs``), which cannot be a dependency (it pins
  ``numpy<2``). Repeated grid points (``values: [1, 1.0]``) run once, as there.
- **Commands**: the ``command`` list (default ``${env} ${interpreter} ${program} ${args}``) with W&B's macros;
  ``${args}`` renders ``--key=value`` with Python's ``str(value)``, exactly as ``wandb agent`` does.
- **Runs**: each run is its own process (``petune fit ... --run.store <store>``), at most N at once, one per
  device when ``--devices`` is given (``CUDA_VISIBLE_DEVICES``), with ``WANDB_MODE=offline``.
- **Exactly once**: the run key (:func:`pl_petune.lightning_cli.run_key_for`) is computed before launching,
  the run is claimed atomically in the store (:meth:`pl_petune.store.Store.claim`), complete runs are skipped,
  failed or killed ones are retried on the next invocation up to ``--retries``, and a run folder's
  ``last.ckpt`` lets ``petune fit`` resume where a killed attempt stopped.

Every run's command is parsed with the real CLI parser before anything trains, so a misspelled key or a
value of the wrong type fails the whole sweep at once, naming the run and the key.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from pl_petune.cli import UsageError

SWEEP_METHODS = ("grid", "random", "bayes")
OFFLINE_METHODS = ("grid", "random")
SWEEP_KEYS = ("method", "parameters", "metric", "command", "program", "name", "description", "project",
              "entity", "early_terminate", "run_cap", "controller")
GOALS = ("minimize", "maximize")
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ARG_MACROS = ("args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags", "args_json",
              "args_json_file", "args_append_hydra", "args_override_hydra")
MACROS = ("env", "interpreter", "program") + ARG_MACROS
_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]*)\}")
# distribution -> (required keys, defaults); W&B infers int_uniform / uniform from min and max alone.
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
PARAM_KEYS = ("value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q", "a", "b",
              "parameters")


class SweepError(UsageError):
    """A sweep file or runner option that cannot work: one line naming the bad value and the choices."""


# ---- parameters ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One leaf of a sweep's ``parameters``: its path (nested names), distribution and settings.

    Args:
        path: the names from the top of ``parameters`` down to this leaf.
        kind: a key of :data:`DISTRIBUTIONS`.
        spec: the parameter's settings, defaults filled in.
    """

    path: tuple[str, ...]
    kind: str
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def grid_values(self) -> list[Any]:
        """The values a grid takes (W&B: ``int_uniform`` is ``min..max``; ``q_uniform`` is ``arange(min, max, q)``)."""
        s = self.spec
        if self.kind == "constant":
            return [s["value"]]
        if self.kind == "categorical":
            return list(s["values"])
        if self.kind == "int_uniform":
            return list(range(s["min"], s["max"] + 1))
        if self.kind == "q_uniform":
            import numpy as np

            return np.arange(s["min"], s["max"], s["q"]).tolist()
        raise SweepError(f"parameter {self.name!r} has distribution {self.kind!r}, which a grid cannot enumerate; "
                         f"grid allows: {', '.join(GRID_DISTRIBUTIONS)}")

    def sample(self, rng: random.Random) -> Any:
        """One draw for a random sweep."""
        s, k = self.spec, self.kind
        if k == "constant":
            return s["value"]
        if k == "categorical":
            if "probabilities" in s:
                return rng.choices(s["values"], weights=s["probabilities"])[0]
            return rng.choice(s["values"])
        if k == "int_uniform":
            return rng.randint(s["min"], s["max"])
        if k in ("uniform", "q_uniform"):
            x = rng.uniform(s["min"], s["max"])
        elif k == "log_uniform":
            x = math.exp(rng.uniform(s["min"], s["max"]))
        elif k in ("log_uniform_values", "q_log_uniform_values"):
            x = math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
        elif k in ("normal", "q_normal"):
            x = rng.gauss(s["mu"], s["sigma"])
        elif k in ("log_normal", "q_log_normal"):
            x = rng.lognormvariate(s["mu"], s["sigma"])
        else:  # beta, q_beta
            x = rng.betavariate(s["a"], s["b"])
        if k.startswith("q_"):
            q = s["q"]
            x = round(x / q) * q
            return int(x) if isinstance(q, int) else x
        return x


def parse_parameters(parameters: Any, prefix: tuple[str, ...] = ()) -> list[Param]:
    """The leaves of a ``parameters`` section, in W&B's order (sorted names at every nesting level).

    Raises:
        SweepError: a parameter that is not a mapping, has unknown keys, or settings that do not fit.
    """
    where = ".".join(prefix) or "parameters"
    if not isinstance(parameters, Mapping) or not parameters:
        raise SweepError(f"{where}: expected a non-empty mapping of parameter names, got {parameters!r}")
    out: list[Param] = []
    for name in sorted(parameters):
        if not isinstance(name, str):
            raise SweepError(f"{where}: parameter names must be strings, got {name!r}")
        spec, path = parameters[name], prefix + (name,)
        full = ".".join(path)
        if not isinstance(spec, Mapping):
            raise SweepError(f"parameter {full!r} must be a mapping with one of value, values, parameters or "
                             f"distribution; got {spec!r}")
        unknown = sorted(set(spec) - set(PARAM_KEYS))
        if unknown:
            raise SweepError(f"parameter {full!r} has unknown key(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(PARAM_KEYS)}")
        if "parameters" in spec:
            if len(spec) > 1:
                raise SweepError(f"parameter {full!r} has nested 'parameters' and also "
                                 f"{', '.join(sorted(set(spec) - {'parameters'}))}; a nested parameter has only 'parameters'")
            out.extend(parse_parameters(spec["parameters"], path))
            continue
        out.append(_leaf(path, dict(spec)))
    return out


def _leaf(path: tuple[str, ...], spec: dict[str, Any]) -> Param:
    full = ".".join(path)
    kind = spec.get("distribution")
    if kind is None:
        if "value" in spec:
            kind = "constant"
        elif "values" in spec:
            kind = "categorical"
        elif "min" in spec and "max" in spec:
            both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            kind = "int_uniform" if both_int else "uniform"
        else:
            raise SweepError(f"parameter {full!r} needs one of value, values, min/max or distribution; got "
                             f"{', '.join(sorted(spec)) or 'nothing'}")
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"parameter {full!r} has distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    required, defaults = DISTRIBUTIONS[kind]
    missing = [k for k in required if k not in spec]
    if missing:
        raise SweepError(f"parameter {full!r} ({kind}) lacks {', '.join(missing)}")
    spec = {**defaults, **{k: v for k, v in spec.items() if k != "distribution"}}
    if kind == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SweepError(f"parameter {full!r}: 'values' must be a non-empty list, got {values!r}")
        probs = spec.get("probabilities")
        if probs is not None and (not isinstance(probs, list) or len(probs) != len(values)
                                  or abs(sum(probs) - 1.0) > 1e-6 or min(probs) < 0):
            raise SweepError(f"parameter {full!r}: 'probabilities' must be {len(values)} non-negative numbers "
                             f"summing to 1, got {probs!r}")
    for k in ("min", "max", "mu", "sigma", "q", "a", "b"):
        if k in spec and kind != "constant" and (isinstance(spec[k], bool) or not isinstance(spec[k], (int, float))):
            raise SweepError(f"parameter {full!r}: {k!r} must be a number, got {spec[k]!r}")
    if "min" in spec and "max" in spec and kind != "constant" and spec["min"] > spec["max"]:
        raise SweepError(f"parameter {full!r}: min {spec['min']} is above max {spec['max']}")
    if kind == "int_uniform" and not all(isinstance(spec[k], int) for k in ("min", "max")):
        raise SweepError(f"parameter {full!r}: int_uniform needs integer min and max, got {spec['min']!r}, {spec['max']!r}")
    if kind in ("log_uniform_values", "q_log_uniform_values") and spec["min"] <= 0:
        raise SweepError(f"parameter {full!r}: {kind} needs min > 0, got {spec['min']}")
    return Param(path, kind, spec)


def _nest(flat: Sequence[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """A run config ``{top-level name: value}`` from leaf paths: nested parameters become dict values."""
    out: dict[str, Any] = {}
    for path, value in flat:
        d = out
        for name in path[:-1]:
            d = d.setdefault(name, {})
        d[path[-1]] = value
    return out


def _hashable(value: Any) -> str:
    """W&B's identity of a grid value: integral floats equal their int (``3.0`` is ``3``)."""
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v
    return json.dumps(norm(value), sort_keys=True, default=str)


def expand(sweep: Mapping[str, Any], count: Optional[int] = None, seed: int = 0) -> list[dict[str, Any]]:
    """The run configs of a sweep, in run order (``{name: value}``; nested parameters give dict values).

    Args:
        sweep: a validated sweep configuration (:func:`validate_sweep`).
        count: random sweeps: how many runs to draw (default: the file's ``run_cap``).
        seed: random sweeps: the generator's seed, so that a rerun draws the same runs.

    Returns:
        One dict per run. Grid: every distinct point of the product, the last parameter (in sorted order)
        varying fastest, cut at ``run_cap``. Random: ``count`` independent draws.

    Raises:
        SweepError: a grid over a continuous distribution, a random sweep without a run count, or ``bayes``.
    """
    params = parse_parameters(sweep["parameters"])
    method = sweep["method"]
    cap = sweep.get("run_cap")
    if method == "grid":
        for p in params:
            if p.kind == "categorical" and "probabilities" in p.spec:
                raise SweepError(f"parameter {p.name!r}: probabilities are not allowed in a grid sweep")
        axes = [p.grid_values() for p in params]
        runs, seen = [], set()
        for point in itertools.product(*axes):
            ident = tuple(_hashable(v) for v in point)
            if ident in seen:
                continue
            seen.add(ident)
            runs.append(_nest([(p.path, v) for p, v in zip(params, point)]))
            if cap is not None and len(runs) >= cap:
                break
        return runs
    if method == "random":
        n = count if count is not None else cap
        if n is None:
            raise SweepError("a random sweep never ends on its own; give --count N or run_cap in the file")
        rng = random.Random(seed)
        return [_nest([(p.path, p.sample(rng)) for p in params]) for _ in range(n)]
    raise SweepError(f"method {method!r} needs W&B's controller (it learns from finished runs); offline "
                     f"methods: {', '.join(OFFLINE_METHODS)}")


# ---- commands ------------------------------------------------------------------------------------------------
def command_args(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument renderings of W&B's agent for one run config (keys in sorted order).

    ``args``: ``--k=v``; ``args_no_hyphens``: ``k=v``; ``args_no_equals``: ``--k v``;
    ``args_no_boolean_flags``: ``--k`` for true, nothing for false; ``args_json``: one JSON argument;
    the hydra forms ``+k=v`` and ``++k=v``. Values are rendered with ``str()`` as the agent does.
    """
    out: dict[str, list[str]] = {m: [] for m in ARG_MACROS if m != "args_json_file"}
    for key in sorted(config):
        value = config[key]
        flag = f"{key}={value}"
        out["args"].append("--" + flag)
        out["args_no_hyphens"].append(flag)
        out["args_no_equals"] += [f"--{key}", str(value)]
        out["args_append_hydra"].append("+" + flag)
        out["args_override_hydra"].append("++" + flag)
        if isinstance(value, bool):
            if value:
                out["args_no_boolean_flags"].append("--" + key)
        else:
            out["args_no_boolean_flags"].append("--" + flag)
    out["args_json"] = [json.dumps({k: config[k] for k in sorted(config)})]
    return out


def render_command(sweep: Mapping[str, Any], config: Mapping[str, Any], json_file: Optional[str] = None,
                   interpreter: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> list[str]:
    """The command line of one run, macros filled in as ``wandb agent`` fills them.

    Args:
        sweep: the sweep configuration (``command``, ``program``).
        config: the run's config (:func:`expand`).
        json_file: where ``${args_json_file}`` points (the file is written by the runner).
        interpreter: what ``${interpreter}`` becomes. W&B uses ``python`` from ``PATH``; the offline runner
            passes its own interpreter so that an unactivated virtual environment still works.
        env: environment for ``${envvar:NAME}`` (default ``os.environ``; an unset name stays as it is).
    """
    env = os.environ if env is None else env
    vars_: dict[str, list[str]] = dict(command_args(config))
    vars_["env"] = ["/usr/bin/env"] if os.name != "nt" else []
    vars_["interpreter"] = [interpreter or "python"]
    vars_["program"] = [str(sweep["program"])] if sweep.get("program") is not None else []
    vars_["args_json_file"] = [json_file] if json_file else []
    out: list[str] = []
    for token in sweep.get("command") or DEFAULT_COMMAND:
        token = str(token)
        if token.startswith("${") and token.endswith("}") and not token.startswith("${envvar:"):
            out += vars_.get(token[2:-1], [])
        else:
            out.append(_ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), token))
    return out


def fit_argv(command: Sequence[str]) -> list[str]:
    """The ``petune`` argv inside a rendered command: from the ``fit`` token on."""
    if "fit" not in command:
        raise SweepError(f"command {' '.join(command)!r} does not run 'fit'; use e.g. [${{env}}, ${{interpreter}}, "
                         "-m, pl_petune, fit, --config, <recipe>, ${args}]")
    return list(command[list(command).index("fit"):])


# ---- validation -----------------------------------------------------------------------------------------------
def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep YAML file (PyYAML, as ``wandb sweep`` reads it) and check its structure."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file {str(p)!r} not found")
    try:
        sweep = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{p}: not valid YAML ({' '.join(str(err).split())})") from None
    validate_sweep(sweep, where=str(p))
    return sweep


def validate_sweep(sweep: Any, where: str = "sweep") -> None:
    """Check a sweep configuration's structure: keys, method, metric, parameters, command.

    Raises:
        SweepError: naming the first problem and what is allowed.
    """
    if not isinstance(sweep, Mapping):
        raise SweepError(f"{where}: a sweep file is a mapping with method, parameters, metric and command")
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(SWEEP_KEYS)}")
    method = sweep.get("method")
    if method not in SWEEP_METHODS:
        raise SweepError(f"{where}: method {method!r} unknown; allowed: {', '.join(SWEEP_METHODS)}")
    if "parameters" not in sweep:
        raise SweepError(f"{where}: no 'parameters' section")
    parse_parameters(sweep["parameters"])
    metric = sweep.get("metric")
    if metric is not None:
        if not isinstance(metric, Mapping) or not isinstance(metric.get("name"), str):
            raise SweepError(f"{where}: metric must be a mapping with 'name' and 'goal', got {metric!r}")
        if metric.get("goal", "minimize") not in GOALS:
            raise SweepError(f"{where}: metric goal {metric.get('goal')!r} unknown; allowed: {', '.join(GOALS)}")
        extra = sorted(set(metric) - {"name", "goal", "target", "impute", "impute_while_running"})
        if extra:
            raise SweepError(f"{where}: metric has unknown key(s) {', '.join(extra)}; allowed: name, goal, target")
    elif method == "bayes":
        raise SweepError(f"{where}: a bayes sweep needs a metric")
    command = sweep.get("command")
    if command is not None:
        if not isinstance(command, list) or not command:
            raise SweepError(f"{where}: command must be a non-empty list of strings, got {command!r}")
        for token in command:
            token = str(token)
            if token.startswith("${") and token.endswith("}") and not token.startswith("${envvar:") \
                    and token[2:-1] not in MACROS:
                raise SweepError(f"{where}: unknown command macro {token!r}; known: "
                                 + ", ".join("${" + m + "}" for m in MACROS) + ", ${envvar:NAME}")
        if "${program}" in [str(t) for t in command] and not sweep.get("program"):
            raise SweepError(f"{where}: the command uses ${{program}} but the file sets no 'program'")
    elif not sweep.get("program"):
        raise SweepError(f"{where}: give a 'command' (or a 'program' for the default command)")
    cap = sweep.get("run_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise SweepError(f"{where}: run_cap must be a positive integer, got {cap!r}")


def check_command_order(command: Sequence[str]) -> None:
    """Refuse ``petune`` argvs whose order would make overrides silently lose (jsonargparse's rule).

    The order is: ``fit``, then ``--config <recipe>`` (one or more), then the overrides.
    """
    argv = fit_argv(command)
    if len(argv) < 3 or not (argv[1] == "--config" or argv[1].startswith("--config=")):
        raise SweepError(f"command {' '.join(command)!r}: 'fit' must be followed by --config <recipe> and then the "
                         "overrides (jsonargparse applies them in order)")


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
        from pl_petune.errors import PetuneError

        try:
            with _quiet():
                return self.parser.parse_args(list(argv))
        except SystemExit:
            raise SweepError("does not parse (see the parser's message above)") from None
        except (PetuneError, Exception) as err:  # jsonargparse's ArgumentError, or a one-line PetuneError
            raise SweepError(_condense(str(err))) from None


def _condense(message: str) -> str:
    """One line from a jsonargparse report: the key and the innermost reasons."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("Subtypes:", "Errors:", "Given value type:"))
            and "Expected a <class 'NoneType'>" not in ln]
    return " ".join(keep)[:600]


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


# ---- a planned run ----------------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    """One run of a sweep: its place in the sweep, config, command and run key."""

    index: int
    config: dict[str, Any]
    command: list[str]
    key: str = ""
    task: str = ""
    method: str = ""

    def spec(self, sweep_name: str) -> dict[str, Any]:
        return {"sweep": sweep_name, "index": self.index, "config": self.config, "command": self.command,
                "task": self.task, "method": self.method}


def covering(configs: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of a few runs that together give every parameter every one of its values.

    Greedy set cover (each pick adds the most values not yet seen; ties go to the earliest run), returned in
    run order. A quick check parses these instead of all runs: every value meets the parser at least once.
    """
    sets = [{(k, _hashable(v)) for k, v in c.items()} for c in configs]
    todo = set().union(*sets) if sets else set()
    picked: list[int] = []
    while todo:
        best = max(range(len(sets)), key=lambda i: (len(sets[i] & todo), -i))
        picked.append(best)
        todo -= sets[best]
    return sorted(picked)


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
    from pl_petune.lightning_cli import _method_name, run_key_for

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
        runs.append(PlannedRun(i, config, command, key, fit.data.task, _method_name(fit.model.class_path)))
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
        if isinstance(got, (int, float)) and not isinstance(got, bool) and not isinstance(want, bool):
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


# ---- the runner ---------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one runner invocation did."""

    complete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


Launcher = Callable[[list[str], dict[str, str], Path], "subprocess.Popen"]


def _popen(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


class Runner:
    """Runs planned runs, N at once, each as its own process, claiming each in the store first.

    Args:
        runs: the planned runs, in launch order.
        store_path: the SQLite results store every run writes to.
        sweep_name: recorded in each claim (``petune runs --sweep``).
        workers: how many runs at once.
        devices: device ids; worker ``i`` pins ``CUDA_VISIBLE_DEVICES`` to ``devices[i % len(devices)]``.
        retries: a run is tried at most ``1 + retries`` times over all invocations (a killed attempt counts).
        log_dir: each run's output goes to ``<log_dir>/<run key>.log`` (appended per attempt).
        progress: show a progress bar over runs.
        launcher: starts one run's process (tests substitute it).
    """

    def __init__(self, runs: Sequence[PlannedRun], store_path: str | os.PathLike, sweep_name: str, workers: int = 1,
                 devices: Sequence[str] = (), retries: int = 2, log_dir: Optional[Path] = None,
                 progress: bool = True, launcher: Launcher = _popen, extra_env: Optional[Mapping[str, str]] = None):
        from pl_petune.store import Store, owner_id

        if workers < 1:
            raise SweepError(f"--workers must be >= 1, got {workers}")
        if retries < 0:
            raise SweepError(f"--retries must be >= 0, got {retries}")
        self.runs, self.sweep_name = list(runs), sweep_name
        self.store_path = Path(store_path).resolve()
        self.store = Store(self.store_path)
        self.workers, self.devices, self.retries = workers, list(devices), retries
        self.log_dir = Path(log_dir or self.store_path.parent / "sweeps" / sweep_name / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.progress, self.launcher = progress, launcher
        self.extra_env = dict(extra_env or {})
        self.owner = owner_id()
        self._lock = threading.Lock()
        self._queue = list(self.runs)
        self._active: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self.outcome = Outcome()

    def run(self) -> Outcome:
        """Run every pending run; returns what happened. Ctrl-C stops the runs and gives their claims back."""
        done_before = sum(1 for r in self.runs if self.store.status(r.key) == "complete")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            # disable=None: a bar on a terminal; in a log file, the one line per finished run is enough
            bar = tqdm(total=len(self.runs), initial=done_before, desc=self.sweep_name, unit="run",
                       file=sys.stderr, dynamic_ncols=True, disable=None)
        self._bar = bar
        self._done = done_before
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        for s in old:
            signal.signal(s, self._interrupt)
        threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.workers)]
        try:
            for t in threads:
                t.start()
                time.sleep(0.05)  # staggered starts (wandb/wandb#597: simultaneous agents collided)
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
        self.outcome.interrupted = self._stop.is_set()
        return self.outcome

    def _interrupt(self, signum, frame) -> None:
        if self._stop.is_set():
            for proc in list(self._active.values()):
                proc.kill()
            return
        self._stop.set()
        self._say(f"petune sweep: stopping ({signal.Signals(signum).name}); runs in flight are given back")
        for proc in list(self._active.values()):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _say(self, line: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _next(self) -> Optional[PlannedRun]:
        with self._lock:
            return self._queue.pop(0) if self._queue and not self._stop.is_set() else None

    def _worker(self, slot: int) -> None:
        device = self.devices[slot % len(self.devices)] if self.devices else None
        while True:
            run = self._next()
            if run is None:
                return
            spec = {**run.spec(self.sweep_name), "device": device, "slot": slot}
            if not self.store.claim(run.key, max_attempts=1 + self.retries, spec=spec, owner=self.owner):
                self._skipped(run)
                continue
            self._launch(run, device)

    def _skipped(self, run: PlannedRun) -> None:
        status = self.store.status(run.key)
        if status == "complete":
            why = "complete"
        elif status == "running":
            why = "running elsewhere"
        else:
            row = next((r for r in self.store.rows() if r["run_key"] == run.key), {})
            why = f"{status} after {row.get('attempts')} attempt(s); raise --retries to try again"
            self._say(f"petune sweep: run {run.index} [{run.key}] skipped: {why}")
        with self._lock:
            self.outcome.skipped[run.key] = why

    def _launch(self, run: PlannedRun, device: Optional[str]) -> None:
        log = self.log_dir / f"{run.key}.log"
        env = dict(os.environ)
        env.setdefault("WANDB_MODE", "offline")
        # CPU runs share the cores: each gets its share of threads unless the user chose (torch reads it).
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.workers)))
        env.update({"PYTHONUNBUFFERED": "1", "PETUNE_STORE": str(self.store_path), "PETUNE_SWEEP": self.sweep_name,
                    "PETUNE_SWEEP_RUN_KEY": run.key, **self.extra_env})
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        if any(t.endswith(".json") and "run-" in t for t in run.command):
            self._write_json_args(run)
        command = run.command + [f"--run.store={self.store_path}"]
        with open(log, "a") as fh:
            fh.write(f"# petune sweep {self.sweep_name}: run {run.index} [{run.key}], "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}, CUDA_VISIBLE_DEVICES={device}\n"
                     f"# {' '.join(command)}\n")
        t0 = time.time()
        proc = self.launcher(command, env, log)
        with self._lock:
            self._active[run.key] = proc
        rc = proc.wait()
        with self._lock:
            self._active.pop(run.key, None)
        took = time.time() - t0
        if self._stop.is_set() and self.store.status(run.key) != "complete":
            self.store.release(run.key)
            return
        if rc == 0 and self.store.status(run.key) == "complete":
            with self._lock:
                self.outcome.complete.append(run.key)
                self._done += 1
            self._say(f"petune sweep: run {run.index} [{run.key}] {run.task} {run.method} complete ({took:.0f}s); "
                      f"{self._done}/{len(self.runs)} complete")
        else:
            why = f"exit code {rc}" if rc != 0 else "exited 0 without a complete record"
            self.store.mark_failed(run.key, f"{why}; log: {log}; last lines: {_tail(log)}")
            with self._lock:
                self.outcome.failed.append(run.key)
            self._say(f"petune sweep: run {run.index} [{run.key}] FAILED ({why}); log: {log}")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(ok=len(self.outcome.complete), failed=len(self.outcome.failed))

    def _write_json_args(self, run: PlannedRun) -> None:
        for token in run.command:
            if token.endswith(f"run-{run.index:05d}.json"):
                Path(token).parent.mkdir(parents=True, exist_ok=True)
                Path(token).write_text(command_args(run.config)["args_json"][0])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


# ---- petune sweep -----------------------------------------------------------------------------------------------
def sweep_name(sweep: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The sweep's ``name``, else its file's stem; used for its folder and in each claim."""
    name = str(sweep.get("name") or Path(path).stem)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def seed_major(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """Runs reordered so every other combination runs for one seed before any runs for the next (F14)."""
    def rank(run: PlannedRun) -> tuple:
        return tuple(str(v) for k, v in sorted(run.config.items()) if k.split(".")[-1].endswith("seed"))
    order: dict[tuple, int] = {}
    for r in runs:
        order.setdefault(rank(r), len(order))
    return sorted(runs, key=lambda r: order[rank(r)])


def save_plan(sweep: Mapping[str, Any], source: Path, runs: Sequence[PlannedRun], folder: Path, name: str) -> Path:
    """Keep the sweep file and its expansion (``runs.jsonl``) next to the store: the sweep's own record."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "sweep.yaml")
    with open(folder / "runs.jsonl", "w") as fh:
        for r in runs:
            fh.write(json.dumps({**r.spec(name), "run_key": r.key}, default=str) + "\n")
    return folder / "runs.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="petune sweep",
        description="Run a W&B sweep file offline: N runs at once, each `petune fit` in its own process, all "
                    "recorded in one results store; rerunning skips complete runs and retries failed ones.")
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
    p.add_argument("--check", action="store_true", help="validate and expand only: print the runs, train nothing")
    p.add_argument("--quick", action="store_true",
                   help="with --check: parse only a covering subset (every value of every parameter once)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished run only)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """``petune sweep``: see :func:`build_parser`. Returns 0 when every run is complete."""
    from pl_petune.store import default_store_path

    args = build_parser().parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else []
    if args.devices is not None and not devices:
        raise SweepError(f"--devices {args.devices!r} names no device; give ids like 0,1")
    workers = args.workers if args.workers is not None else max(1, len(devices))
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    sweep = load_sweep(args.sweep)
    if sweep.get("method") == "grid" and args.count is not None:
        raise SweepError("--count applies to random sweeps; a grid runs every point (cut it with run_cap)")
    name = sweep_name(sweep, args.sweep)
    store = Path(args.store or default_store_path()).resolve()
    folder = store.parent / "sweeps" / name
    if args.quick and not args.check:
        raise SweepError("--quick only applies to --check (a run needs every command checked)")
    runs = plan(sweep, count=args.count, seed=args.seed, where=args.sweep, json_dir=folder / "args", quick=args.quick)
    unique: dict[str, PlannedRun] = {}
    for r in runs:
        unique.setdefault(r.key, r)
    if len(unique) < len(runs):
        print(f"petune sweep: {len(runs)} runs are {len(unique)} distinct runs (same run key); each runs once",
              file=sys.stderr)
    ordered = list(unique.values())
    if args.order == "seed_major":
        ordered = seed_major(ordered)
    elif args.order == "shuffled":
        random.Random(args.seed).shuffle(ordered)
    if args.check:
        varying = {k for r in ordered for k in r.config if r.config[k] != ordered[0].config.get(k)}
        for r in ordered:
            shown = {k: v for k, v in r.config.items() if k in varying}
            print(f"{r.index:5d} {r.key} {r.task:8s} {r.method:12s} {_short(shown, 120)}")
        print(f"petune sweep: {name}: {len(ordered)} runs; every command parses", file=sys.stderr)
        return 0
    save_plan(sweep, Path(args.sweep), runs, folder, name)
    print(f"petune sweep: {name}: {len(ordered)} runs, {workers} worker(s)"
          + (f" on devices {','.join(devices)}" if devices else "") + f"; store {store}; logs {folder / 'logs'}",
          file=sys.stderr)
    runner = Runner(ordered, store, name, workers=workers, devices=devices, retries=args.retries,
                    log_dir=folder / "logs", progress=not args.no_progress)
    out = runner.run()
    complete = sum(1 for r in ordered if runner.store.status(r.key) == "complete")
    print(f"petune sweep: {name}: {complete}/{len(ordered)} complete; this invocation ran {len(out.complete)}, "
          f"{len(out.failed)} failed" + (", interrupted (rerun the same command to continue)" if out.interrupted else ""),
          file=sys.stderr)
    if out.interrupted:
        return 130
    return 0 if complete == len(ordered) else 1


# ---- petune runs ------------------------------------------------------------------------------------------------
def runs_table(store_path: str | os.PathLike, status: Optional[str] = None,
               sweep: Optional[str] = None) -> list[dict[str, Any]]:
    """One row per run of a store: key, status (``running?`` when its owner is gone), attempts, task, method,
    seeds, the headline test metric, the sweep and run index, and the error of a failed run."""
    from pl_petune.store import Store, _owner_alive

    store = Store(store_path)
    records = {r["run_key"]: r for r in store.records(status=None)}
    out = []
    for row in store.rows():
        spec = json.loads(row["spec"]) if row.get("spec") else {}
        rec = records.get(row["run_key"], {})
        st = row["status"]
        if st == "running" and not _owner_alive(row.get("owner"), None):
            st = "stale"
        metric = rec.get("primary_metric")
        score = (rec.get("test_metrics") or {}).get(f"test/{metric}") if metric else None
        item = {
            "run_key": row["run_key"], "status": st, "attempts": row["attempts"],
            "task": rec.get("task") or spec.get("task"), "method": rec.get("method") or spec.get("method"),
            "init_seed": rec.get("init_seed"), "data_seed": rec.get("data_seed"),
            "metric": f"test/{metric}" if metric else None, "score": score,
            "sweep": spec.get("sweep") or rec.get("name"), "index": spec.get("index"),
            "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["updated_at"])),
            "error": (row.get("error") or "")[:200] or None,
        }
        if status and item["status"] != status:
            continue
        if sweep and item["sweep"] != sweep:
            continue
        out.append(item)
    return out


def runs_main(argv: Optional[list[str]] = None) -> int:
    """``petune runs``: list a results store's runs with their status."""
    from pl_petune.store import ROW_STATUSES, default_store_path

    p = argparse.ArgumentParser(prog="petune runs", description="List the runs of a results store and their status.")
    p.add_argument("--store", default=None, help="results store (default: $PETUNE_STORE or runs/results.sqlite)")
    p.add_argument("--status", default=None, help="only runs with this status: " + ", ".join(ROW_STATUSES + ("stale",)))
    p.add_argument("--sweep", default=None, help="only runs of this sweep (its name)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--forget", action="append", default=None, metavar="RUN_KEY",
                   help="delete these runs' rows (repeatable; all or none) so the next sweep trains them again")
    args = p.parse_args(argv)
    if args.status is not None and args.status not in ROW_STATUSES + ("stale",):
        raise SweepError(f"--status {args.status!r} unknown; allowed: {', '.join(ROW_STATUSES + ('stale',))}")
    path = Path(args.store or default_store_path())
    if not path.is_file():
        raise SweepError(f"no results store at {str(path)!r}; pass --store or set $PETUNE_STORE")
    if args.forget:
        from pl_petune.store import Store

        Store(path).forget(args.forget)  # a StoreError is a PetuneError: the CLI prints its one line
        print(f"forgot {len(args.forget)} run(s) in {path}: {', '.join(args.forget)}; rerun the sweep to train them "
              "again", file=sys.stderr)
        return 0
    rows = runs_table(path, status=args.status, sweep=args.sweep)
    if args.format == "json":
        print(json.dumps(rows, indent=1, default=str))
        return 0
    cols = ("run_key", "status", "attempts", "sweep", "index", "task", "method", "init_seed", "data_seed",
            "metric", "score", "updated", "error")
    if args.format == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        return 0
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    shown = cols[:-1]
    table = [[fmt(r[c]) for c in shown] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(shown)]
    print("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for r, t in zip(rows, table):
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
        if r["error"] and r["status"] == "failed":
            print(f"    error: {r['error']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{len(rows)} run(s): " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    return 0


__all__ = ["SweepError", "Param", "parse_parameters", "expand", "command_args", "render_command", "fit_argv",
           "load_sweep", "validate_sweep", "check_metric", "logged_metrics", "FitParser", "PlannedRun", "plan",
           "Runner", "Outcome", "seed_major", "main", "runs_main", "runs_table"]
