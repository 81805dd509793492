"""What a complete run record must satisfy before a store files it (issue 18: results that cannot be wrong).

:func:`pl_petune.records.validate` checks the schema (fields present, JSON-able). :func:`check_complete`
checks the *meaning* of a complete record against the task registry: a known task, a metric of that task with
the registry's direction, a held-out score for it, every known score inside its metric's range (scores are
fractions: a CB macro-F1 of 70.0 is a percent that would print as ``7000.0``), a known protocol and integer
seeds. Pure Python (the task registry only): no torch, so stores and reports stay light.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from pl_petune.records import RecordError

# Kept equal to pl_petune.data.protocols.PROTOCOLS by a test; that module imports numpy and sits under data/,
# which records and stores must not import.
PROTOCOLS = ("train_split", "petuning", "dev_split", "leaky", "dev_split_leaky")
LEAKY_PROTOCOLS = frozenset({"leaky", "dev_split_leaky"})

# Closed range of each metric as a fraction (what torchmetrics returns and records hold).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "f1_macro": (0.0, 1.0),
    "mcc": (-1.0, 1.0), "pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0),
}


def metric_range(metric: str) -> tuple[float, float]:
    """The closed range of ``metric`` as a fraction; ``loss`` is ``[0, inf)``.

    Raises:
        RecordError: a metric pl_petune does not know.
    """
    if metric == "loss":
        return (0.0, math.inf)
    if metric not in METRIC_RANGES:
        raise RecordError(f"unknown metric {metric!r}; known: {', '.join([*METRIC_RANGES, 'loss'])}")
    return METRIC_RANGES[metric]


def check_score(metric: str, value: Any, where: str) -> float:
    """``value`` as a float inside ``metric``'s range (NaN allowed: a diverged run is still a result).

    Args:
        metric: metric name without prefix, e.g. ``f1_macro``.
        value: the score.
        where: what to name in the error, e.g. ``record 'ab12' test/f1_macro``.

    Raises:
        RecordError: not a number, infinite, or outside the range (with a percent hint when it looks like one).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RecordError(f"{where} = {value!r} is not a number")
    v = float(value)
    if math.isnan(v):
        return v
    lo, hi = metric_range(metric)
    if math.isinf(v) or not lo <= v <= hi:
        hint = ""
        if hi == 1.0 and lo * 100 <= v <= 100:
            hint = (f" ({v:g} looks like a percent: records hold fractions, so divide by 100, or import with "
                    "--unit percent)")
        raise RecordError(f"{where} = {v:g} is outside {metric}'s range [{lo:g}, {hi:g}]{hint}")
    return v


def _seed(record: Mapping[str, Any], name: str) -> None:
    v = record.get(name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise RecordError(f"record {record.get('run_key')!r}: {name} {v!r} is not an integer seed")


def check_complete(record: Mapping[str, Any]) -> None:
    """Refuse a complete record whose numbers would be reported wrongly.

    Raises:
        RecordError: naming the record's key, the bad value and what is allowed.
    """
    from pl_petune.tasks import TASKS

    key = record.get("run_key")
    task = record.get("task")
    if task not in TASKS:
        raise RecordError(f"record {key!r}: unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    spec = TASKS[task]
    names = [m.name for m in spec.metrics]
    metric = record.get("primary_metric")
    if metric not in names:
        raise RecordError(f"record {key!r}: primary_metric {metric!r} is not a metric of {task}; known: "
                          + ", ".join(names))
    hib = spec.direction(metric)
    if record.get("higher_is_better") is not hib:
        raise RecordError(f"record {key!r}: higher_is_better {record.get('higher_is_better')!r} contradicts "
                          f"{metric} (higher is {'better' if hib else 'worse'})")
    protocol = record.get("protocol")
    if protocol not in PROTOCOLS:
        raise RecordError(f"record {key!r}: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    method = record.get("method")
    if not isinstance(method, str) or not method.strip():
        raise RecordError(f"record {key!r}: method {method!r} must be a non-empty name")
    _seed(record, "init_seed")
    _seed(record, "data_seed")
    test = record.get("test_metrics")
    if not isinstance(test, Mapping) or f"test/{metric}" not in test:
        have = ", ".join(sorted(test)) if isinstance(test, Mapping) and test else "none"
        raise RecordError(f"record {key!r}: test_metrics lacks test/{metric} (the primary metric); it has: {have}")
    for k, v in test.items():
        base = str(k).split("/", 1)[-1]
        if base in METRIC_RANGES or base == "loss":
            check_score(base, v, f"record {key!r} {k}")
