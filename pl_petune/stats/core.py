"""Pure statistics over run records: seeds, summaries, significance, band averages, upper bounds.

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
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from pl_petune.record_checks import METRIC_RANGES, check_score
from pl_petune.records import RecordError, test_score

TESTS = ("welch", "student", "paired", "mannwhitney", "wilcoxon")
ALTERNATIVES = ("one-sided", "two-sided")
SeedKey = tuple  # (init_seed, data_seed)


# ---- observations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """What a table column stands for: a method under one protocol (and an optional variant).

    Attributes:
        method: registry name, e.g. ``lora``.
        protocol: data protocol of the runs, e.g. ``train_split`` or ``leaky``.
        variant: ``key=value`` pairs from ``--group-by`` ("" when not split).
        leaky: True when the runs selected their checkpoint on the data they report (protocol ``leaky``).
    """

    method: str
    protocol: str
    variant: str = ""
    leaky: bool = False

    def label(self, show_protocol: bool = False, name: str | None = None) -> str:
        """Display name: ``name`` (default: the method), plus the variant and protocol when needed, plus
        ``[leaky]``."""
        out = name or self.method
        if self.variant:
            out += f" ({self.variant})"
        if show_protocol:
            out += f" @{self.protocol}"
        if self.leaky:
            out += " [leaky]"
        return out


@dataclass(frozen=True)
class Obs:
    """One run reduced to what the statistics read.

    Attributes:
        task: task name. column: the :class:`Column` of the run. band: ``low``/``medium``/``high`` or None.
        init_seed, data_seed: the run's seeds; tied: True when one seed drove both (``seed_mode=tied``).
        score: ``test/<primary_metric>`` (raw, not scaled). metric: the primary metric's name.
        higher_is_better: direction of ``metric``.
        trainable_params, trainable_percent, train_size, steps: run facts used by the figures (may be None).
        run_key: the record's key (links, notes).
    """

    task: str
    column: Column
    band: str | None
    init_seed: Any
    data_seed: Any
    tied: bool
    score: float
    metric: str
    higher_is_better: bool
    trainable_params: int | None = None
    trainable_percent: float | None = None
    train_size: int | None = None
    steps: float | None = None
    run_key: str = ""

    @property
    def seed(self) -> SeedKey:
        return (self.init_seed, self.data_seed)


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """Value at a dotted ``path`` of a record (``hparams.lr``), or None when absent."""
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def default_band(task: str) -> str | None:
    """The task registry's band of ``task``, or None for a task pl_petune does not know."""
    from pl_petune.tasks import get_task  # pure-Python registry; no torch

    try:
        return get_task(task).band
    except ValueError:
        return None


def headline_metric(task: str, metric: str) -> tuple[str, bool]:
    """``(metric, higher_is_better)`` after checking that ``metric`` is one of ``task``'s in the registry.

    Raises:
        ValueError: an unknown task, or a metric the task does not have (naming the task's metrics).
    """
    from pl_petune.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"headline for unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    names = [m.name for m in TASKS[task].metrics]
    if metric not in names:
        raise ValueError(f"headline metric {metric!r} is not one of {task}'s: {', '.join(names)}")
    return metric, TASKS[task].direction(metric)


def observations(records: Sequence[Mapping[str, Any]], group_by: Sequence[str] = (),
                 band_of: Callable[[str], str | None] = default_band,
                 headline: Mapping[str, str] | None = None) -> list[Obs]:
    """Reduce complete run records to :class:`Obs`, one per record.

    Args:
        records: run records (schema 1); only ``status == "complete"`` ones are read.
        group_by: dotted record paths (e.g. ``hparams.lr``) that split a method's column into variants.
        band_of: band of a task when a record carries none.
        headline: task -> the metric a study reports for it (the module-wise paper: ``stsb: spearman``,
            ``qqp: f1``); other tasks use each record's ``primary_metric``.

    Returns:
        The observations, in record order. A NaN score stays NaN (:func:`~pl_petune.stats.tables.analyze`
        leaves it out of its cell and says so).

    Raises:
        ValueError: one task reported under two metrics or two directions (the cells would not compare), or
            a record lacking its task's headline metric.
    """
    heads = {t: headline_metric(t, m) for t, m in (headline or {}).items()}
    out: list[Obs] = []
    seen: dict[str, tuple[str, bool]] = {}
    for rec in records:
        if rec.get("status", "complete") != "complete":
            continue
        task = rec["task"]
        if task in heads:
            metric, hib = heads[task]
            value = (rec.get("test_metrics") or {}).get(f"test/{metric}")
            if value is None:
                have = ", ".join(sorted(rec.get("test_metrics") or {})) or "none"
                raise ValueError(f"run {rec.get('run_key')!r} ({task}) has no test/{metric}, the study's headline "
                                 f"metric for {task}; it has: {have}")
            score = float(value)
        else:
            metric, hib = rec["primary_metric"], bool(rec["higher_is_better"])
            if f"test/{metric}" not in (rec.get("test_metrics") or {}):
                have = ", ".join(sorted(rec.get("test_metrics") or {})) or "none"
                raise ValueError(f"run {rec.get('run_key')!r} ({task}) has no test/{metric}, its primary metric; "
                                 f"it has: {have}")
            score = test_score(rec)
        if metric in METRIC_RANGES:  # a percent from an old store or another source must not print as 7000.0
            try:
                check_score(metric, score, f"run {rec.get('run_key')!r} ({task}) test/{metric}")
            except RecordError as err:
                raise ValueError(str(err)) from None
        if seen.setdefault(task, (metric, hib)) != (metric, hib):
            raise ValueError(f"task {task!r} has records with metric/direction {seen[task]} and {(metric, hib)}; "
                             f"a table compares one metric per task (name one: --headline {task}=METRIC)")
        variant = ",".join(f"{k.split('.')[-1]}={lookup(rec, k)}" for k in group_by)
        protocol = rec.get("protocol", "?")
        leaky = bool(rec.get("leaky")) or protocol in ("leaky", "dev_split_leaky")
        steps = rec.get("steps")
        out.append(Obs(
            task=task, column=Column(rec["method"], protocol, variant, leaky),
            band=rec.get("band") or band_of(task), init_seed=rec.get("init_seed"), data_seed=rec.get("data_seed"),
            tied=rec.get("seed_mode") == "tied", score=score, metric=metric, higher_is_better=hib,
            trainable_params=rec.get("trainable_params"), trainable_percent=rec.get("trainable_percent"),
            train_size=rec.get("train_size"), steps=None if steps is None else float(steps),
            run_key=str(rec.get("run_key", "")),
        ))
    return out


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


# ---- significance ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A method's sample against the baseline's, oriented so that ``better`` means better for the metric.

    Attributes:
        n_method, n_base: sample sizes (for ``paired``, both are the number of shared seeds).
        p_better: one-sided p of "method better than baseline"; p_worse: of "worse"; p_two: two-sided p.
            All None when no test could run (see ``note``).
        delta: mean(method) - mean(baseline), raw units (sign is the metric's, not oriented).
        note: why no test ran, or how a degenerate case was decided.
    """

    n_method: int
    n_base: int
    p_better: float | None
    p_worse: float | None
    p_two: float | None
    delta: float
    note: str = ""

    @property
    def tested(self) -> bool:
        return self.p_two is not None

    def p(self, alternative: str = "one-sided") -> float | None:
        """The p-value a decision reads: the smaller one-sided p, or the two-sided p."""
        if not self.tested:
            return None
        return min(self.p_better, self.p_worse) if alternative == "one-sided" else self.p_two  # type: ignore[type-var]


def _alt(better: bool, higher_is_better: bool) -> str:
    """scipy's alternative for "method better" (or "worse"): method > baseline when higher is better."""
    return "greater" if better == higher_is_better else "less"


def _degenerate(a: np.ndarray, b: np.ndarray, test: str) -> float | None:
    """Signed difference that decides a test whose statistic is undefined, or None when it is defined.

    Zero variance in both samples (paired: constant differences) leaves t = 0/0 or d/0. Decision,
    documented in docs/reports.md: identical constants -> no difference (p = 1); different constants -> the
    difference is certain (p = 0 on its side). The same rule covers Wilcoxon with all-zero differences.
    """
    def flat(x: np.ndarray) -> bool:  # float noise (0.7 - 0.68 vs 0.71 - 0.69) counts as constant
        return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))

    if test in ("welch", "student"):
        if flat(a) and flat(b):
            diff = float(a.mean() - b.mean())
            return 0.0 if abs(diff) <= 1e-12 * max(1.0, float(np.abs(a).max())) else diff
    elif test in ("paired", "wilcoxon"):
        d = a - b
        if flat(d):
            return 0.0 if np.abs(d).max() <= 1e-12 * max(1.0, float(np.abs(a).max())) else float(d.mean())
    return None


def _scipy_p(a: np.ndarray, b: np.ndarray, test: str, alternative: str) -> float:
    with warnings.catch_warnings():
        # a constant sample (WSC's std 0.0) is a legitimate input; scipy warns about its moments
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return _scipy_p_raw(a, b, test, alternative)


def _scipy_p_raw(a: np.ndarray, b: np.ndarray, test: str, alternative: str) -> float:
    if test == "welch":
        return float(sps.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)
    if test == "student":
        return float(sps.ttest_ind(a, b, equal_var=True, alternative=alternative).pvalue)
    if test == "paired":
        return float(sps.ttest_rel(a, b, alternative=alternative).pvalue)
    if test == "mannwhitney":
        return float(sps.mannwhitneyu(a, b, alternative=alternative).pvalue)
    if test == "wilcoxon":
        return float(sps.wilcoxon(a - b, alternative=alternative).pvalue)
    raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")


def compare(method: Mapping[Hashable, float] | Sequence[float], base: Mapping[Hashable, float] | Sequence[float],
            higher_is_better: bool = True, test: str = "welch") -> Comparison:
    """Test a method's scores against the baseline's (the paper: one-tailed t-test against finetuning).

    ``welch`` is ``scipy.stats.ttest_ind(equal_var=False)``, ``student`` the same with ``equal_var=True``,
    ``paired`` is ``ttest_rel`` on the seeds both share, ``mannwhitney`` is ``mannwhitneyu`` and
    ``wilcoxon`` the signed-rank test on shared seeds. Both one-sided p-values ("better", "worse") and the
    two-sided one are returned; :func:`decide` turns them into a verdict.

    Args:
        method: the method's scores; a mapping seed -> score for the paired tests.
        base: the baseline's scores, same form.
        higher_is_better: direction of the metric.
        test: one of :data:`TESTS`.

    Returns:
        A :class:`Comparison`; untested (p None) when a side has fewer than 2 scores (paired: 2 shared seeds).

    Raises:
        ValueError: unknown test, or a paired test given plain sequences.
    """
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    note = ""
    if test in ("paired", "wilcoxon"):
        if not (isinstance(method, Mapping) and isinstance(base, Mapping)):
            raise ValueError(f"the {test} test pairs by seed: pass mappings seed -> score")
        shared = sorted(set(method) & set(base), key=repr)
        if len(shared) != len(method) or len(shared) != len(base):
            note = f"paired on {len(shared)} shared seeds"
        a = np.array([method[k] for k in shared], dtype=float)
        b = np.array([base[k] for k in shared], dtype=float)
    else:
        a = np.array(list(method.values()) if isinstance(method, Mapping) else list(method), dtype=float)
        b = np.array(list(base.values()) if isinstance(base, Mapping) else list(base), dtype=float)
    delta = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return Comparison(int(a.size), int(b.size), None, None, None, delta,
                          f"no test: n={a.size} vs n={b.size} (needs 2 each)")
    diff = _degenerate(a, b, test)
    if diff is not None:
        if diff == 0:
            return Comparison(a.size, b.size, 1.0, 1.0, 1.0, delta, "identical constants: no difference")
        oriented_better = (diff > 0) == higher_is_better
        return Comparison(a.size, b.size, 0.0 if oriented_better else 1.0, 1.0 if oriented_better else 0.0,
                          0.0, delta, "zero variance, different constants: p=0")
    p_better = _scipy_p(a, b, test, _alt(True, higher_is_better))
    p_worse = _scipy_p(a, b, test, _alt(False, higher_is_better))
    p_two = _scipy_p(a, b, test, "two-sided")
    return Comparison(int(a.size), int(b.size), p_better, p_worse, p_two, delta, note)


def decide(comparison: Comparison, alpha: float = 0.05, alternative: str = "one-sided",
           p_adjusted: float | None = None) -> int:
    """Verdict of a comparison: +1 significantly better, -1 significantly worse, 0 neither (or untested).

    One-sided (the paper): each one-tailed alternative ("better", "worse") is accepted when its p < alpha.
    Two-sided: p < alpha, and the side is the sign of the oriented mean difference.

    Args:
        comparison: from :func:`compare`.
        alpha: significance level.
        alternative: ``one-sided`` or ``two-sided``.
        p_adjusted: a multiplicity-adjusted p (Holm) that replaces :meth:`Comparison.p`.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}; known: {', '.join(ALTERNATIVES)}")
    p = comparison.p(alternative) if p_adjusted is None else p_adjusted
    if p is None or not p < alpha:
        return 0
    if alternative == "one-sided" or comparison.p_better != comparison.p_worse:
        return 1 if comparison.p_better < comparison.p_worse else -1  # type: ignore[operator]
    return 0


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None entries are skipped and stay None).

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)).

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):  # type: ignore[arg-type, return-value]
        running = max(running, min(1.0, (m - rank) * pvalues[i]))  # type: ignore[operator]
        out[i] = running
    return out


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
