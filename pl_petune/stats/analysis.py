"""Every number a report prints, computed once: :func:`analyze` groups observations into cells and runs each
comparison, band average and seed series under the study's :class:`Settings`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pl_petune.stats.core import BandAverage, band_average, main_series, seed_series
from pl_petune.stats.inputs import Column, Obs
from pl_petune.stats.labels import BANDS, _registry, _registry_size, method_rank, task_label
from pl_petune.stats.significance import ALTERNATIVES, TESTS, Comparison, compare, decide, holm

TEST_NAMES = {
    "welch": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False)",
    "student": "Student's t-test (scipy.stats.ttest_ind, equal_var=True)",
    "paired": "paired t-test on shared seeds (scipy.stats.ttest_rel)",
    "mannwhitney": "Mann-Whitney U test (scipy.stats.mannwhitneyu)",
    "wilcoxon": "Wilcoxon signed-rank test on shared seeds (scipy.stats.wilcoxon)",
}


@dataclass(frozen=True)
class Settings:
    """How a report tests and prints.

    Attributes:
        baseline: the method every other is tested against (full finetuning, ``finetune``).
        test: one of ``welch``, ``student``, ``paired``, ``mannwhitney``, ``wilcoxon``.
        alternative: ``one-sided`` (the paper: each one-tailed alternative at ``alpha``) or ``two-sided``.
        alpha: significance level. holm: Holm-adjust p-values within each table's family of comparisons.
        ddof: std's delta degrees of freedom (1: sample std). scale: printed score multiplier (100).
        digits: decimals printed.
        order: column names (as the records label them) in the order to print; columns not named follow.
            Default: the baseline, then the paper's order (FT, Adapter, PT, LoRA, BitFit), then the rest.
        rename: column name -> printed label. method_of: column name -> registry method (for the order).
        task_labels: ``paper`` (CB, STS-B, ...) or ``name`` (the registry names, cb, stsb, ...).
        headline: task -> metric the study reports (named in the notes).
    """

    baseline: str = "finetune"
    test: str = "welch"
    alternative: str = "one-sided"
    alpha: float = 0.05
    holm: bool = False
    ddof: int = 1
    scale: float = 100.0
    digits: int = 1
    order: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    method_of: Mapping[str, str] = field(default_factory=dict)
    task_labels: str = "paper"
    headline: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"unknown test {self.test!r}; known: {', '.join(TESTS)}")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"unknown alternative {self.alternative!r}; known: {', '.join(ALTERNATIVES)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha {self.alpha} must lie in (0, 1)")
        if self.task_labels not in ("paper", "name"):
            raise ValueError(f"task labels {self.task_labels!r} unknown; known: paper, name")
        if not 0 <= self.digits <= 6:
            raise ValueError(f"digits {self.digits} must lie in 0..6")

    @property
    def paired(self) -> bool:
        return self.test in ("paired", "wilcoxon")

    def describe(self) -> str:
        side = ("one-tailed: each alternative (better, worse) accepted at p < alpha" if self.alternative == "one-sided"
                else "two-sided")
        return (f"Test against `{self.rename.get(self.baseline, self.baseline)}`: {TEST_NAMES[self.test]}, {side}, "
                f"alpha = {self.alpha}"
                + (", Holm-corrected within the table" if self.holm else "") + ". ↑/↓: significantly better/worse.")


@dataclass
class Analysis:
    """Every number the tables print, computed once by :func:`analyze`."""

    settings: Settings
    tasks: list[str]
    band_of: dict[str, str | None]
    higher: dict[str, bool]
    metric: dict[str, str]
    columns: list[Column]
    cells: dict[tuple[str, Column], list[Obs]]
    baseline_of: dict[Column, Column | None]
    comparisons: dict[tuple[str, Column], Comparison] = field(default_factory=dict)
    verdicts: dict[tuple[str, Column], int] = field(default_factory=dict)
    bands: dict[tuple[str, Column], BandAverage] = field(default_factory=dict)
    band_comparisons: dict[tuple[str, Column], Comparison] = field(default_factory=dict)
    band_verdicts: dict[tuple[str, Column], int] = field(default_factory=dict)
    band_tasks: dict[str, list[str]] = field(default_factory=dict)
    series: dict[tuple[str, Column], dict[str, list[Obs]]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def show_protocol(self) -> bool:
        return len({c.protocol for c in self.columns}) > 1

    def label(self, column: Column) -> str:
        return column.label(self.show_protocol, self.settings.rename.get(column.method))

    def task_label(self, task: str) -> str:
        return task_label(task) if self.settings.task_labels == "paper" else task

    @property
    def any_leaky(self) -> bool:
        return any(c.leaky for c in self.columns)


def _scores(obs: Sequence[Obs]) -> dict:
    return {o.seed: o.score for o in obs}


def analyze(obs: Sequence[Obs], settings: Settings = Settings()) -> Analysis:
    """Group observations into cells and run every comparison and band average.

    Args:
        obs: from :func:`pl_petune.stats.core.observations`.
        settings: test, baseline and printing choices.

    Returns:
        The :class:`Analysis` the table builders read.

    Raises:
        ValueError: no observations.
    """
    if not obs:
        raise ValueError("no complete run records to report")
    dropped: dict[tuple[str, Column, str], list[str]] = {}
    kept = []
    for o in obs:
        why = ("a NaN score" if math.isnan(o.score) else
               "no usable seed" if any(not isinstance(x, int) or isinstance(x, bool) for x in o.seed) else "")
        if why:
            dropped.setdefault((o.task, o.column, why), []).append(o.run_key)
        else:
            kept.append(o)
    if not kept:
        raise ValueError("no run has a score and seeds to report: " + "; ".join(
            f"{t}: {len(k)} with {w}" for (t, _, w), k in dropped.items()))
    obs = kept
    raw: dict[tuple[str, Column], list[Obs]] = {}
    for o in obs:
        raw.setdefault((o.task, o.column), []).append(o)
    band_of = {o.task: o.band for o in obs}
    size: dict[str, float] = {}
    for o in obs:
        if o.train_size is not None:
            size[o.task] = max(size.get(o.task, 0), o.train_size)
    band_rank = {b: i for i, b in enumerate(BANDS)}
    # the official train size orders tasks (as it decides the band), not a run's subsample of it
    tasks = sorted(band_of, key=lambda t: (band_rank.get(band_of[t], len(BANDS)),  # type: ignore[arg-type]
                                           _registry_size(t) if t in _registry() else size.get(t, math.inf), t))
    order = {name: i for i, name in enumerate(settings.order)}
    columns = sorted({c for _, c in raw},
                     key=lambda c: (c.leaky, c.protocol, order.get(c.method, len(order)), c.method != settings.baseline,
                                    method_rank(c.method, settings.method_of.get(c.method)), c.method, c.variant))
    a = Analysis(settings, tasks, band_of, {o.task: o.higher_is_better for o in obs}, {o.task: o.metric for o in obs},
                 columns, {}, {})
    for (t, col, why), keys in dropped.items():
        a.dropped.append(f"{a.task_label(t)} / {a.label(col)}: {len(keys)} run(s) with {why} left out "
                         f"(run {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    for key, group in raw.items():
        a.series[key] = seed_series(group)
        a.cells[key] = main_series(group)
        counts = Counter(o.seed for o in a.cells[key])
        dup = [s for s, n in counts.items() if n > 1]
        if dup:
            a.duplicates.append(f"{key[0]} / {a.label(key[1])}: {len(dup)} seed pair(s) with several runs "
                                "(different hyper-parameters? split them with --group-by)")
    for col in columns:
        bases = [c for c in columns if c.method == settings.baseline and c.protocol == col.protocol]
        same = [c for c in bases if c.variant == col.variant]
        a.baseline_of[col] = None if col.method == settings.baseline else (
            same[0] if same else bases[0] if len(bases) == 1 else None)

    def scores(key: tuple[str, Column]) -> Any:
        s = _scores(a.cells[key])
        return s if settings.paired else list(s.values())

    for (task, col) in a.cells:
        base = a.baseline_of[col]
        if base is not None and (task, base) in a.cells:
            a.comparisons[(task, col)] = compare(scores((task, col)), scores((task, base)), a.higher[task],
                                                 settings.test)

    # band rows: plain mean of task means; the test compares per-seed band averages on shared tasks
    groups = {b: [t for t in tasks if band_of[t] == b] for b in (*BANDS, None)}
    a.band_tasks = {b: ts for b, ts in groups.items() if ts and b is not None}
    a.band_tasks["all"] = list(tasks)
    for b, ts in a.band_tasks.items():
        for col in columns:
            have = [t for t in ts if (t, col) in a.cells]
            if not have:
                continue
            a.bands[(b, col)] = band_average({t: _scores(a.cells[(t, col)]) for t in have}, settings.ddof)
            base = a.baseline_of[col]
            if base is None:
                continue
            shared = [t for t in have if (t, base) in a.cells]
            if not shared or len({a.higher[t] for t in shared}) > 1:
                continue
            mine = band_average({t: _scores(a.cells[(t, col)]) for t in shared}, settings.ddof)
            theirs = band_average({t: _scores(a.cells[(t, base)]) for t in shared}, settings.ddof)
            if mine.per_seed is None or theirs.per_seed is None:
                a.band_comparisons[(b, col)] = Comparison(mine.n, theirs.n, None, None, None, mine.mean - theirs.mean,
                                                          "no test: tasks share fewer than 2 seeds")
                continue
            m, t_ = mine.per_seed, theirs.per_seed
            a.band_comparisons[(b, col)] = compare(m if settings.paired else list(m.values()),
                                                   t_ if settings.paired else list(t_.values()),
                                                   a.higher[shared[0]], settings.test)
    for comps, verdicts in ((a.comparisons, a.verdicts), (a.band_comparisons, a.band_verdicts)):
        keys = list(comps)  # type: ignore[arg-type]
        adjusted = holm([comps[k].p(settings.alternative) for k in keys]) if settings.holm else [None] * len(keys)  # type: ignore[index]
        for k, p_adj in zip(keys, adjusted):
            verdicts[k] = decide(comps[k], settings.alpha, settings.alternative, p_adj)  # type: ignore[index]
    return a

