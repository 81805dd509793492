"""The statistics against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from stats_records import make_record
from pl_petune.stats.core import (
    band_average, classify_seeds, compare, decide, holm, main_series, observations, relative_upper_bound,
    seed_series, summarize,
)

RNG = np.random.default_rng(7)
A = RNG.normal(0.70, 0.03, 10)
B = RNG.normal(0.67, 0.05, 12)


def test_summarize_matches_hand_values():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert summarize([1.0, 2.0, 3.0], ddof=0).std == pytest.approx(math.sqrt(2 / 3))
    assert math.isnan(summarize([0.5]).std) and summarize([0.5]).n == 1


@pytest.mark.parametrize("test,kwargs", [("welch", {"equal_var": False}), ("student", {"equal_var": True})])
def test_unpaired_t_tests_match_scipy(test, kwargs):
    c = compare(A, B, higher_is_better=True, test=test)
    assert c.p_better == pytest.approx(sps.ttest_ind(A, B, alternative="greater", **kwargs).pvalue)
    assert c.p_worse == pytest.approx(sps.ttest_ind(A, B, alternative="less", **kwargs).pvalue)
    assert c.p_two == pytest.approx(sps.ttest_ind(A, B, **kwargs).pvalue)
    # lower-is-better flips which tail is "better"
    low = compare(A, B, higher_is_better=False, test=test)
    assert low.p_better == pytest.approx(c.p_worse) and low.p_worse == pytest.approx(c.p_better)


def test_paired_test_pairs_by_seed_not_by_position():
    m = {(s, s): v for s, v in zip(range(10), A)}
    b = {(s, s): v + 0.01 + RNG.normal(0, 0.001) for s, v in zip(range(10), A)}
    shuffled = dict(reversed(list(b.items())))
    c = compare(m, shuffled, test="paired")
    keys = sorted(m)
    expected = sps.ttest_rel([m[k] for k in keys], [b[k] for k in keys], alternative="less").pvalue
    assert c.p_worse == pytest.approx(expected) and c.p_worse < 1e-6
    partial = compare(m, {k: b[k] for k in keys[:6]}, test="paired")
    assert partial.n_method == 6 and "6 shared seeds" in partial.note
    with pytest.raises(ValueError, match="pairs by seed"):
        compare(list(A), list(A), test="paired")


def test_mannwhitney_with_ties_matches_scipy():
    a = [0.5, 0.5, 0.6, 0.6, 0.7]
    b = [0.5, 0.5, 0.5, 0.6, 0.4]
    c = compare(a, b, test="mannwhitney")
    assert c.p_better == pytest.approx(sps.mannwhitneyu(a, b, alternative="greater").pvalue)
    assert c.p_two == pytest.approx(sps.mannwhitneyu(a, b).pvalue)


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy, on the expected value
def test_zero_variance_both_sides():
    same = compare([0.6346] * 5, [0.6346] * 5)
    assert (same.p_better, same.p_worse, same.p_two) == (1.0, 1.0, 1.0) and decide(same) == 0
    diff = compare([0.7] * 5, [0.6] * 5)
    assert diff.p_better == 0.0 and decide(diff) == 1
    assert decide(compare([0.7] * 5, [0.6] * 5, higher_is_better=False)) == -1
    # one constant side is an ordinary Welch test
    one = compare([0.6] * 5, list(B))
    assert one.p_two == pytest.approx(sps.ttest_ind([0.6] * 5, B, equal_var=False).pvalue)
    # paired with constant non-zero differences is certain
    m = {k: 0.5 + k / 100 for k in range(4)}
    assert decide(compare(m, {k: v - 0.02 for k, v in m.items()}, test="paired")) == 1


def test_too_few_runs_is_untested():
    c = compare([0.7], B)
    assert not c.tested and c.p() is None and decide(c) == 0 and "n=1" in c.note


def test_one_sided_and_two_sided_decisions_differ_between_alpha_and_twice_alpha():
    a = np.array([0.0, 1.0, 2.0, 3.0, 4.0]) + 0.0
    shift = next(d for d in np.linspace(0, 3, 3001)
                 if 0.05 < sps.ttest_ind(a + d, a, equal_var=False).pvalue < 0.1)
    c = compare(a + shift, a)
    assert 0.025 < c.p_better < 0.05
    assert decide(c, 0.05, "one-sided") == 1 and decide(c, 0.05, "two-sided") == 0
    assert decide(c, 0.05, "one-sided", p_adjusted=0.2) == 0


def test_holm_hand_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.02, None, 0.5, 0.001]) == [pytest.approx(0.04), None, pytest.approx(0.5), pytest.approx(0.003)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1, and never below a smaller p's adjustment


def test_band_average_per_seed_and_independent_fallback():
    per_seed = band_average({"a": {1: 1.0, 2: 3.0}, "b": {1: 5.0, 2: 7.0}})
    assert per_seed.mean == 4.0 and per_seed.per_seed == {1: 3.0, 2: 5.0}
    assert per_seed.std == pytest.approx(math.sqrt(2)) and per_seed.spread == "per-seed"
    indep = band_average({"a": {1: 1.0, 2: 3.0}, "b": {3: 5.0, 4: 9.0}})
    assert indep.spread == "independent" and indep.std == pytest.approx(math.sqrt(2 + 8) / 2)


def test_band_average_reproduces_paper_low_band_of_finetuning():
    # Revisiting PETuning Table 2, FT: CB 70.00±13.32, COPA 54.70±3.36, WSC 63.46±0.0 -> Avg. (Low) 62.72±4.58.
    # Two-point samples m ± s/sqrt(2) have sample std s; disjoint seeds select the independent spread.
    def two(m, s, k):
        return {k: m - s / math.sqrt(2), k + 1: m + s / math.sqrt(2)}
    avg = band_average({"cb": two(70.00, 13.32, 0), "copa": two(54.70, 3.36, 10), "wsc": two(63.46, 0.0, 20)})
    assert round(avg.mean, 2) == 62.72 and round(avg.std, 2) == 4.58


def test_band_average_rejects_empty():
    with pytest.raises(ValueError):
        band_average({"a": {}})


def test_relative_upper_bound_both_directions():
    assert relative_upper_bound([0.5, 0.6], [0.5, 0.55]) == pytest.approx(100 * 0.05 / 0.55)
    assert relative_upper_bound([0.2, 0.3], [0.25, 0.4], higher_is_better=False) == pytest.approx(20.0)
    assert math.isnan(relative_upper_bound([0.1], [0.0]))


@pytest.mark.parametrize("seeds,tied,regime", [
    ([(1, 7), (2, 7), (3, 7)], False, "weight-init"),
    ([(7, 1), (7, 2), (7, 3)], False, "data-order"),
    ([(1, 1), (2, 2)], False, "global"),
    ([(1, 5), (2, 9)], True, "global"),
    ([(1, 5), (2, 9)], False, "mixed"),
    ([(1, 1), (1, 1)], False, "single"),
])
def test_classify_seeds(seeds, tied, regime):
    assert classify_seeds(seeds, tied) == regime


def _copa_study():
    recs = [make_record("copa", "finetune", 0.5 + s / 100, s, s, seed_mode="tied") for s in range(1, 6)]
    recs += [make_record("copa", "finetune", 0.6 + s / 100, s, 1, seed_mode="separate") for s in range(2, 6)]
    recs += [make_record("copa", "finetune", 0.7 + s / 100, 1, s, seed_mode="separate") for s in range(2, 6)]
    return observations(recs)


def test_seed_series_and_main_series():
    obs = _copa_study()
    ser = seed_series(obs)
    assert {o.seed for o in ser["weight-init"]} == {(s, 1) for s in range(2, 6)}
    assert {o.seed for o in ser["data-order"]} == {(1, s) for s in range(2, 6)}
    assert {o.seed for o in ser["global"]} == {(s, s) for s in range(1, 6)}
    assert len(main_series(obs)) == 5
    plain = [o for o in obs if o.tied]
    assert main_series(plain) == plain


def test_observations_band_direction_leaky_and_variants():
    recs = [make_record("cb", "lora", 0.8, 1, hparams={"r": 8}),
            make_record("mytask", "lora", 0.3, 1, higher_is_better=False, metric="mse", band="medium"),
            make_record("nobody", "lora", 0.3, 1, protocol="leaky")]
    obs = observations(recs, group_by=["hparams.r"])
    assert obs[0].band == "low" and obs[0].column.variant == "r=8" and obs[0].score == 0.8
    assert obs[1].band == "medium" and obs[1].higher_is_better is False
    assert obs[2].band is None and obs[2].column.leaky and "[leaky]" in obs[2].column.label()
    with pytest.raises(ValueError, match="metric/direction"):
        observations([make_record("cb", "lora", 0.8, 1), make_record("cb", "bitfit", 0.8, 1, metric="accuracy")])
