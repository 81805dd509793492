"""A sweep file's structure, checked against W&B's sweep configuration schema before anything expands.

The keys, distributions and constraints follow the JSON schema of W&B's sweep engine (the ``sweeps``
package, ``config/schema.json``): top-level keys, the parameter-name pattern ``^[A-Za-z_][A-Za-z0-9_.-]*$``,
the keys each distribution takes (no others), ``q > 0``, ``sigma >= 0``, ``a, b >= 0``, ``min > 0`` for the
``*_values`` log distributions, integer ``min``/``max`` for ``int_uniform``, probabilities as non-negative
numbers, ``run_cap > 0``, and hyperband's ``early_terminate`` fields. Features that need W&B's server
(``bayes``, ``custom``, ``early_terminate``, ``scheduler``, Launch jobs) are named as online-only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from pl_petune.cli import UsageError

SWEEP_METHODS = ("grid", "random", "bayes", "custom")
OFFLINE_METHODS = ("grid", "random")
SWEEP_KEYS = ("method", "parameters", "metric", "command", "program", "name", "description", "project",
              "entity", "early_terminate", "run_cap", "controller", "apiVersion", "kind", "job", "image_uri",
              "metrics", "scheduler")
# Keys that only W&B's server acts on: offline they change nothing, so the user is told once.
ONLINE_ONLY_KEYS = {
    "early_terminate": "stops runs early from the metrics other runs logged (W&B's controller); offline, "
                       "every run trains to its own early stopping",
    "scheduler": "a custom optimiser scheduler (W&B's controller)",
    "job": "a W&B Launch job", "image_uri": "a W&B Launch image",
}
GOALS = ("minimize", "maximize")
IMPUTE = ("latest", "best", "worst")
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ARG_MACROS = ("args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags", "args_json",
              "args_json_file", "args_append_hydra", "args_override_hydra")
MACROS = ("env", "interpreter", "program") + ARG_MACROS
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# distribution -> (required keys, {optional key: default}); W&B's schema allows no other key.
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {"probabilities": None}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "inv_log_uniform": (("min", "max"), {}),
    "inv_log_uniform_values": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "q_log_uniform": (("min", "max"), {"q": 1.0}),
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
NUMBER_KEYS = ("min", "max", "mu", "sigma", "q", "a", "b")
HYPERBAND_KEYS = {"type": str, "min_iter": int, "max_iter": int, "s": (int, float), "eta": (int, float),
                  "strict": bool}


class SweepError(UsageError):
    """A sweep file or runner option that cannot work: one line naming the bad value and the choices."""


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
        """The dotted path, as the run config names it."""
        return ".".join(self.path)

    def grid_values(self) -> Any:
        """The values a grid takes; see :func:`pl_petune.sweep.expand.grid_axis`."""
        from pl_petune.sweep.expand import grid_axis

        return grid_axis(self)

    def sample(self, rng: Any) -> Any:
        """One draw for a random sweep; see :func:`pl_petune.sweep.expand.sample`."""
        from pl_petune.sweep.expand import sample

        return sample(self, rng)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_parameters(parameters: Any, prefix: tuple[str, ...] = ()) -> list[Param]:
    """The leaves of a ``parameters`` section, in W&B's order (sorted names at every nesting level).

    Raises:
        SweepError: a name that W&B's pattern refuses, a parameter that is not a mapping, has keys its
            distribution does not take, or settings out of their range.
    """
    where = ".".join(prefix) or "parameters"
    if not isinstance(parameters, Mapping) or not parameters:
        raise SweepError(f"{where}: expected a non-empty mapping of parameter names, got {parameters!r}")
    for name in parameters:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise SweepError(f"{where}: parameter name {name!r} is not allowed; a name is a string matching "
                             f"{NAME_PATTERN.pattern} (quote numbers: '1')")
    out: list[Param] = []
    for name in sorted(parameters):
        spec, path = parameters[name], prefix + (name,)
        full = ".".join(path)
        if not isinstance(spec, Mapping):
            raise SweepError(f"parameter {full!r} must be a mapping with one of value, values, parameters or "
                             f"distribution; got {spec!r}")
        unknown = sorted(str(k) for k in set(spec) - set(PARAM_KEYS))
        if unknown:
            raise SweepError(f"parameter {full!r} has unknown key(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(PARAM_KEYS)}")
        if "parameters" in spec:
            if len(spec) > 1:
                raise SweepError(f"parameter {full!r} has nested 'parameters' and also "
                                 f"{', '.join(sorted(set(spec) - {'parameters'}))}; a nested parameter has only "
                                 "'parameters'")
            out.extend(parse_parameters(spec["parameters"], path))
            continue
        out.append(_leaf(path, dict(spec)))
    return out


def _infer_kind(full: str, spec: Mapping[str, Any]) -> str:
    """W&B's inference when ``distribution`` is absent: constant, categorical, int_uniform or uniform."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    raise SweepError(f"parameter {full!r} needs one of value, values, min/max or distribution; got "
                     f"{', '.join(sorted(map(str, spec))) or 'nothing'}")


def _leaf(path: tuple[str, ...], spec: dict[str, Any]) -> Param:
    full = ".".join(path)
    kind = spec.pop("distribution", None)
    if kind is None:
        kind = _infer_kind(full, spec)
    if not isinstance(kind, str) or kind not in DISTRIBUTIONS:
        raise SweepError(f"parameter {full!r} has distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    required, optional = DISTRIBUTIONS[kind]
    missing = [k for k in required if k not in spec]
    if missing:
        raise SweepError(f"parameter {full!r} ({kind}) lacks {', '.join(missing)}")
    extra = sorted(set(spec) - set(required) - set(optional))
    if extra:
        raise SweepError(f"parameter {full!r} ({kind}) does not take {', '.join(extra)}; {kind} takes: "
                         f"{', '.join(required + tuple(optional)) or 'no settings'}")
    if kind == "categorical_w_probabilities":
        kind = "categorical"
    spec = {**{k: v for k, v in optional.items() if v is not None}, **spec}
    for k in NUMBER_KEYS:
        if k in spec and not _is_number(spec[k]):
            raise SweepError(f"parameter {full!r}: {k!r} must be a finite number, got {spec[k]!r}")
    if kind == "categorical":
        _check_categorical(full, spec)
    for value in (spec.get("values") or []) + ([spec["value"]] if "value" in spec else []):
        if _has_null(value):
            raise SweepError(f"parameter {full!r}: value {value!r} holds null, which the agent renders as the text "
                             "'None'; leave the key out to keep its default, or sweep a real value")
    if "min" in spec and spec["min"] > spec["max"]:
        raise SweepError(f"parameter {full!r}: min {spec['min']} is above max {spec['max']}")
    if kind == "int_uniform" and not all(isinstance(spec[k], int) for k in ("min", "max")):
        raise SweepError(f"parameter {full!r}: int_uniform needs integer min and max, got {spec['min']!r}, "
                         f"{spec['max']!r}")
    if kind.endswith("_values") and spec["min"] <= 0:
        raise SweepError(f"parameter {full!r}: {kind} needs min > 0, got {spec['min']}")
    if "q" in spec and spec["q"] <= 0:
        raise SweepError(f"parameter {full!r}: q must be > 0 (the step values are rounded to), got {spec['q']}")
    for k in ("sigma", "a", "b"):
        if k in spec and spec[k] < 0:
            raise SweepError(f"parameter {full!r}: {k} must be >= 0, got {spec[k]}")
    return Param(path, kind, spec)


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, Mapping):
        return any(_has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False


def _check_categorical(full: str, spec: Mapping[str, Any]) -> None:
    values = spec["values"]
    if not isinstance(values, list) or not values:
        raise SweepError(f"parameter {full!r}: 'values' must be a non-empty list, got {values!r}")
    probs = spec.get("probabilities")
    if probs is None:
        return
    if not isinstance(probs, list) or len(probs) != len(values) or not all(_is_number(p) and p >= 0 for p in probs) \
            or abs(sum(probs) - 1.0) > 1e-6:
        raise SweepError(f"parameter {full!r}: 'probabilities' must be {len(values)} non-negative numbers "
                         f"summing to 1 (one per value), got {probs!r}")


def online_only(sweep: Mapping[str, Any]) -> list[str]:
    """One line per key of ``sweep`` that only W&B's server acts on (nothing is done with it offline)."""
    return [f"{k}: {why}; online only, ignored by petune sweep" for k, why in ONLINE_ONLY_KEYS.items() if k in sweep]


def validate_sweep(sweep: Any, where: str = "sweep") -> None:
    """Check a sweep configuration against W&B's schema: keys, method, metric, parameters, command, run_cap.

    Raises:
        SweepError: naming the first problem and what is allowed.
    """
    if not isinstance(sweep, Mapping):
        raise SweepError(f"{where}: a sweep file is a mapping with method, parameters, metric and command")
    unknown = sorted(str(k) for k in set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(SWEEP_KEYS)}")
    method = sweep.get("method")
    if not isinstance(method, str) or method not in SWEEP_METHODS:
        raise SweepError(f"{where}: method {method!r} unknown; allowed: {', '.join(SWEEP_METHODS)}")
    for key in ("program", "name", "description", "project", "entity", "apiVersion", "job", "image_uri"):
        if key in sweep and not isinstance(sweep[key], str):
            raise SweepError(f"{where}: {key} must be a string, got {sweep[key]!r}")
    if "parameters" not in sweep:
        raise SweepError(f"{where}: no 'parameters' section")
    parse_parameters(sweep["parameters"])
    _check_metric_block(sweep, where)
    _check_command(sweep, where)
    cap = sweep.get("run_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise SweepError(f"{where}: run_cap must be a positive integer, got {cap!r}")
    _check_online_blocks(sweep, where)


def _check_metric_block(sweep: Mapping[str, Any], where: str) -> None:
    metric = sweep.get("metric")
    if metric is None:
        if sweep.get("method") == "bayes":
            raise SweepError(f"{where}: a bayes sweep needs a metric")
        return
    if not isinstance(metric, Mapping) or not isinstance(metric.get("name"), str):
        raise SweepError(f"{where}: metric must be a mapping with 'name' and 'goal', got {metric!r}")
    extra = sorted(str(k) for k in set(metric) - {"name", "goal", "target", "impute", "impute_while_running"})
    if extra:
        raise SweepError(f"{where}: metric has unknown key(s) {', '.join(extra)}; allowed: name, goal, target, "
                         "impute, impute_while_running")
    if metric.get("goal", "minimize") not in GOALS:
        raise SweepError(f"{where}: metric goal {metric.get('goal')!r} unknown; allowed: {', '.join(GOALS)}")
    if "target" in metric and not _is_number(metric["target"]):
        raise SweepError(f"{where}: metric target must be a number, got {metric['target']!r}")
    if "impute" in metric and metric["impute"] not in IMPUTE:
        raise SweepError(f"{where}: metric impute {metric['impute']!r} unknown; allowed: {', '.join(IMPUTE)}")
    if "impute_while_running" in metric and metric["impute_while_running"] not in IMPUTE + ("false", False):
        raise SweepError(f"{where}: metric impute_while_running {metric['impute_while_running']!r} unknown; "
                         f"allowed: {', '.join(IMPUTE)}, false")


def _check_command(sweep: Mapping[str, Any], where: str) -> None:
    command = sweep.get("command")
    if command is None:
        if not sweep.get("program"):
            raise SweepError(f"{where}: give a 'command' (or a 'program' for the default command)")
        return
    if not isinstance(command, list) or not command:
        raise SweepError(f"{where}: command must be a non-empty list of strings, got {command!r}")
    for token in command:
        if isinstance(token, (Mapping, list)) or token is None:
            raise SweepError(f"{where}: command token {token!r} is not a string (in a flow list quote macros: "
                             "'${args}')")
        token = str(token)
        if token.startswith("${") and token.endswith("}") and not token.startswith("${envvar:") \
                and token[2:-1] not in MACROS:
            raise SweepError(f"{where}: unknown command macro {token!r}; known: "
                             + ", ".join("${" + m + "}" for m in MACROS) + ", ${envvar:NAME}")
    if "${program}" in [str(t) for t in command] and not sweep.get("program"):
        raise SweepError(f"{where}: the command uses ${{program}} but the file sets no 'program'")


def _check_online_blocks(sweep: Mapping[str, Any], where: str) -> None:
    """The blocks only W&B's server reads must still be what W&B accepts: a file must work online too."""
    early_terminate = sweep.get("early_terminate")
    if early_terminate is not None:
        if not isinstance(early_terminate, Mapping) or early_terminate.get("type") != "hyperband":
            raise SweepError(f"{where}: early_terminate must be a mapping with type: hyperband, "
                             f"got {early_terminate!r}")
        for k, v in early_terminate.items():
            want: Optional[Any] = HYPERBAND_KEYS.get(k)
            if want is None:
                raise SweepError(f"{where}: early_terminate has unknown key {k!r}; allowed: "
                                 f"{', '.join(HYPERBAND_KEYS)}")
            if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
                raise SweepError(f"{where}: early_terminate.{k} has the wrong type: {v!r}")
        if "min_iter" not in early_terminate and not ("max_iter" in early_terminate and "s" in early_terminate):
            raise SweepError(f"{where}: early_terminate (hyperband) needs min_iter, or max_iter and s")
        if early_terminate.get("min_iter", 1) < 1 or early_terminate.get("eta", 3) <= 1:
            raise SweepError(f"{where}: early_terminate needs min_iter >= 1 and eta > 1, got {dict(early_terminate)!r}")
    ctl = sweep.get("controller")
    if ctl is not None and (not isinstance(ctl, Mapping) or ctl.get("type") not in ("local", "cloud")):
        raise SweepError(f"{where}: controller must be {{type: local}} or {{type: cloud}}, got {ctl!r}")
    if "kind" in sweep and sweep["kind"] != "sweep":
        raise SweepError(f"{where}: kind must be 'sweep', got {sweep['kind']!r}")
    if "metrics" in sweep:
        raise SweepError(f"{where}: 'metrics' (several objectives) needs method: custom on W&B's server; "
                         "give one 'metric'")


__all__ = ["SweepError", "Param", "parse_parameters", "validate_sweep", "online_only",
           "SWEEP_KEYS", "SWEEP_METHODS", "OFFLINE_METHODS", "DISTRIBUTIONS", "GRID_DISTRIBUTIONS", "MACROS",
           "ARG_MACROS", "DEFAULT_COMMAND", "GOALS"]


# The file readers live in pl_petune.sweep.files; these names stay importable from here.
from pl_petune.sweep.files import load_sweep, sweep_path  # noqa: E402

__all__ += ["load_sweep", "sweep_path"]
