"""Significance of a method against the baseline: scipy's tests, both one-tailed alternatives, Holm.

Degenerate samples (both constant) are decided by rule (docs/reports.md), not left to scipy's NaN.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

TESTS = ("welch", "student", "paired", "mannwhitney", "wilcoxon")
ALTERNATIVES = ("one-sided", "two-sided")


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

