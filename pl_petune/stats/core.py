"""Pure statistics over run records: summaries, band averages, upper bounds, seed regimes.

Everything here is a function of plain data (records are dicts; scores are floats). Nothing imports torch
or Lightning, so a report runs in a second anywhere. Metric direction is data: every function that needs
it takes ``higher_is_better`` and orients results so that "better" always means better for the metric.

The layouts follow "Revisiting Parameter-Efficient Tuning: Are We Really There Yet?" (Chen et al.,
EMNLP 2022, arXiv 2202.07962): Table 2 (mean ± std over seeds, one-tailed test against finetuning,
band averages), Table 3 (band verdicts), Table 4 (weight-init vs data-order vs global seeds) and Figure 3
(best-of-seeds relative to finetuning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

# Observations and significance live in their own modules; their names stay importable from here.
from pl_petune.stats.inputs import (  # noqa: F401
    Column,
    Obs,
    SeedKey,
    default_band,
    headline_metric,
    lookup,
    observations,
)
from pl_petune.stats.significance import ALTERNATIVES, TESTS, Comparison, compare, decide, holm  # noqa: F401


# ---- summaries ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation and count of a sample (std is nan when n <= ddof)."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float], ddof: int = 1) -> Summary:
    """Mean and std of ``values`` (``ddof=1``: the sample std; ``ddof=0``: numpy's default).

    Example:
        >>> summarize([1.0, 2.0, 3.0]).std
        1.0
    """
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(np.std(arr, ddof=ddof)) if n > ddof else math.nan
    return Summary(float(np.mean(arr)), std, n)


def best(values: Sequence[float], higher_is_better: bool = True) -> float:
    """Best of ``values`` for the metric's direction (max, or min when lower is better)."""
    return float(max(values) if higher_is_better else min(values))


# ---- band averages --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandAverage:
    """Average over a band's tasks, as the paper computes it.

    Attributes:
        mean: plain mean of the task means.
        std: spread over seeds: the std of the per-seed averages over the seeds every task shares
            (``spread == "per-seed"``); when fewer than 2 seeds are shared, sqrt(sum of task variances) / k,
            the std of an average of independent tasks (``spread == "independent"``).
        tasks: the tasks averaged. per_seed: seed -> average over tasks (None for ``independent``).
    """

    mean: float
    std: float
    tasks: tuple[str, ...]
    per_seed: dict | None = field(default=None, compare=False)
    spread: str = "per-seed"

    @property
    def n(self) -> int:
        return len(self.per_seed) if self.per_seed is not None else 0


def band_average(cells: Mapping[str, Mapping[Hashable, float]], ddof: int = 1) -> BandAverage:
    """Band average of a method: plain mean of task means, with a spread over seeds.

    Args:
        cells: task -> (seed -> score) for the tasks to average.
        ddof: delta degrees of freedom of the std.

    Raises:
        ValueError: no tasks, or a task without scores.
    """
    if not cells or any(not v for v in cells.values()):
        raise ValueError("a band average needs at least one task, each with scores")
    tasks = tuple(sorted(cells))
    means = [float(np.mean(list(cells[t].values()))) for t in tasks]
    shared = set.intersection(*(set(cells[t]) for t in tasks))
    if len(shared) >= 2:
        per_seed = {k: float(np.mean([cells[t][k] for t in tasks])) for k in sorted(shared, key=repr)}
        return BandAverage(float(np.mean(means)), summarize(list(per_seed.values()), ddof).std, tasks, per_seed)
    var = [summarize(list(cells[t].values()), ddof).std ** 2 for t in tasks]
    return BandAverage(float(np.mean(means)), math.sqrt(sum(var)) / len(tasks), tasks, None, "independent")


# ---- upper bounds (Figure 3) ----------------------------------------------------------------------
def relative_upper_bound(method: Sequence[float], base: Sequence[float], higher_is_better: bool = True) -> float:
    """Best-of-seeds of a method relative to the baseline's, in percent, positive = better.

    100 * (best(method) - best(base)) / |best(base)|, negated when lower is better (Figure 3 of the paper
    plots this for prefix tuning against finetuning). nan when the baseline's best is 0.
    """
    bm, bb = best(method, higher_is_better), best(base, higher_is_better)
    if bb == 0:
        return math.nan
    rel = 100.0 * (bm - bb) / abs(bb)
    return rel if higher_is_better else -rel


# ---- seed regimes (Table 4) -----------------------------------------------------------------------
REGIMES = ("weight-init", "data-order", "global")


def classify_seeds(seeds: Sequence[tuple[Any, Any]], tied: bool = False) -> str:
    """Which randomness a series of runs varies.

    Args:
        seeds: ``(init_seed, data_seed)`` of each run.
        tied: the runs used one seed for both (``seed_mode == "tied"``).

    Returns:
        ``weight-init`` (init varies, data fixed), ``data-order`` (data varies, init fixed), ``global``
        (both vary together: tied, or init == data in every run), ``mixed`` (both vary independently) or
        ``single`` (fewer than 2 distinct seed pairs).
    """
    distinct = set(seeds)
    if len(distinct) < 2:
        return "single"
    inits = {i for i, _ in distinct}
    datas = {d for _, d in distinct}
    if tied or all(i == d for i, d in distinct):
        return "global"
    if len(datas) == 1:
        return "weight-init"
    if len(inits) == 1:
        return "data-order"
    return "mixed"


def seed_series(obs: Sequence[Obs]) -> dict[str, list[Obs]]:
    """The Table 4 series inside one cell's runs (a run may belong to several series).

    ``global``: runs that are tied or have init == data. ``weight-init``: the largest group of runs sharing a
    data seed with distinct init seeds (ties: the smallest data seed). ``data-order``: likewise with the
    init seed fixed. A series is kept only when it has at least 2 distinct seed pairs.
    """
    out: dict[str, list[Obs]] = {}
    glob = [o for o in obs if o.tied or o.init_seed == o.data_seed]
    if len({o.seed for o in glob}) >= 2:
        out["global"] = glob
    separate = [o for o in obs if not o.tied]
    for regime, fixed in (("weight-init", lambda o: o.data_seed), ("data-order", lambda o: o.init_seed)):
        groups: dict[Any, list[Obs]] = {}
        for o in separate:
            groups.setdefault(fixed(o), []).append(o)
        candidates = [(k, g) for k, g in groups.items() if classify_seeds([o.seed for o in g]) == regime]
        if candidates:
            _, g = min(candidates, key=lambda kg: (-len({o.seed for o in kg[1]}), repr(kg[0])))
            out[regime] = g
    return out


def main_series(obs: Sequence[Obs]) -> list[Obs]:
    """Runs a cell's Table 2 entry reads: the global series when the cell also holds a Table 4 study
    (weight-init or data-order series beside it), otherwise every run."""
    series = seed_series(obs)
    if "global" in series and ("weight-init" in series or "data-order" in series):
        return series["global"]
    return list(obs)
