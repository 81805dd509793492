"""Table layouts: every printed number recomputed by hand (numpy/scipy) from synthetic records."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import stats as sps

from stats_records import make_record, study
from pl_petune.stats.core import Column, observations
from pl_petune.stats.tables import Settings, Trend, Value, analyze, table2, table3, table4, to_csv, to_latex, \
    to_markdown, upper_bound


def _scores(recs, task, method):
    return np.array([r["test_metrics"][f"test/{r['primary_metric']}"] for r in recs
                     if r["task"] == task and r["method"] == method])


@pytest.fixture(scope="module")
def recs():
    out = study(methods=("finetune", "lora", "adapter", "bitfit"))
    return [r for r in out if not (r["method"] == "bitfit" and r["task"] in ("copa", "qnli"))]


@pytest.fixture(scope="module")
def analysis(recs):
    return analyze(observations(recs))


def _row(grid, label):
    return next(r for r in grid.rows if r[0] == label)


def test_table2_cells_match_numpy_and_scipy(recs, analysis):
    g = table2(analysis)
    assert g.header[1] == "finetune"  # baseline first
    col = g.header.index("adapter")
    a, b = _scores(recs, "cb", "adapter"), _scores(recs, "cb", "finetune")
    cell = _row(g, "CB")[col]
    assert cell.render("md").startswith(f"{100 * a.mean():.1f}±{100 * a.std(ddof=1):.1f}")
    p_worse = sps.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
    p_better = sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert cell.verdict == (-1 if p_worse < 0.05 else 1 if p_better < 0.05 else 0)


def test_every_task_cell_verdict_agrees_with_scipy(recs, analysis):
    for (task, col), comp in analysis.comparisons.items():
        a, b = _scores(recs, task, col.method), _scores(recs, task, "finetune")
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            continue
        assert comp.p_two == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)


def test_wsc_zero_variance_prints_like_the_paper(analysis):
    row = _row(table2(analysis), "WSC")
    assert [c.render("md") for c in row[1:]] == ["63.5±0.0"] * 4  # no arrow: identical constants


def test_missing_method_is_dash_and_band_average_is_marked(recs, analysis):
    g = table2(analysis)
    col = g.header.index("bitfit")
    assert _row(g, "COPA")[col] == "–"
    low = _row(g, "Avg. (Low)")[col]
    assert low.mark == "†"
    # bitfit's Low average is the plain mean of its two task means (cb, wsc)
    expected = np.mean([_scores(recs, "cb", "bitfit").mean(), _scores(recs, "wsc", "bitfit").mean()])
    assert low.mean == pytest.approx(100 * expected)
    assert any(n.startswith("†") for n in g.notes)


def test_band_row_spread_and_test_use_per_seed_averages(recs, analysis):
    tasks = ["rte", "mrpc"]
    per_seed = {m: np.mean([_scores(recs, t, m) for t in tasks], axis=0) for m in ("lora", "finetune")}
    cell = _row(table2(analysis), "Avg. (Medium)")[table2(analysis).header.index("lora")]
    assert cell.std == pytest.approx(100 * per_seed["lora"].std(ddof=1))
    p = sps.ttest_ind(per_seed["lora"], per_seed["finetune"], equal_var=False, alternative="greater").pvalue
    q = sps.ttest_ind(per_seed["lora"], per_seed["finetune"], equal_var=False, alternative="less").pvalue
    trend = _row(table3(analysis), "lora")[1 + ["low", "medium", "high"].index("medium")]
    assert trend == Trend(1 if p < 0.05 else -1 if q < 0.05 else 0)


def test_notes_name_test_and_n(analysis):
    notes = " ".join(table2(analysis).notes)
    assert "Welch" in notes and "alpha = 0.05" in notes and "one-tailed" in notes
    assert "n per cell: 10 runs (seeds) in every cell" in notes


def test_holm_can_only_remove_arrows(recs):
    obs = observations(recs)
    plain, corrected = analyze(obs), analyze(obs, Settings(holm=True))
    assert sum(map(abs, corrected.verdicts.values())) <= sum(map(abs, plain.verdicts.values()))
    assert all(corrected.verdicts[k] in (0, v) for k, v in plain.verdicts.items())


def test_lower_is_better_flips_arrows():
    recs = [make_record("t", m, v + 0.01 * s, s, metric="loss", higher_is_better=False, band="low")
            for m, v in (("finetune", 0.5), ("lora", 0.3)) for s in range(5)]
    a = analyze(observations(recs))
    assert a.verdicts[("t", Column("lora", "train_split"))] == 1
    ub = upper_bound(a)
    assert _row(ub, "t")[1].mean == pytest.approx(100 * (0.5 - 0.3) / 0.5)


def test_small_n_is_reported():
    recs = [make_record("cb", "finetune", 0.7 + 0.01 * s, s) for s in range(3)] + [make_record("cb", "lora", 0.8, 1)]
    g = table2(analyze(observations(recs)))
    notes = " ".join(g.notes)
    assert "CB / lora = 1" in notes and "no test: n=1" in notes
    assert _row(g, "CB")[2].render("md") == "80.0"


def test_leaky_columns_are_marked_everywhere():
    recs = [make_record("rte", m, v + 0.01 * s, s, protocol=p) for p in ("train_split", "leaky")
            for m, v in (("finetune", 0.7), ("lora", 0.72)) for s in range(4)]
    a = analyze(observations(recs))
    for grid in (table2(a), table3(a), upper_bound(a)):
        md = to_markdown(grid)
        assert "lora @leaky [leaky]" in md and "[leaky]: runs of a leaky protocol" in md
    # the leaky column is tested against the leaky baseline, not the clean one
    assert a.baseline_of[Column("lora", "leaky", "", True)] == Column("finetune", "leaky", "", True)


def test_table4_series_means(recs):
    rs = [make_record("copa", "lora", 0.5 + s / 100, s, s, seed_mode="tied") for s in range(1, 6)]
    rs += [make_record("copa", "lora", 0.6 + s / 100, s, 1) for s in range(2, 6)]
    rs += [make_record("copa", "lora", 0.7 + s / 100, 1, s) for s in range(2, 6)]
    rs += [make_record("copa", "finetune", 0.5, s) for s in range(1, 4)]
    a = analyze(observations(rs))
    g = table4(a)
    row = _row(g, "COPA / lora")
    wi = 100 * np.array([0.6 + s / 100 for s in range(2, 6)])
    assert row[1].mean == pytest.approx(wi.mean()) and row[1].std == pytest.approx(wi.std(ddof=1))
    assert row[3].mean == pytest.approx(100 * np.mean([0.5 + s / 100 for s in range(1, 6)]))
    assert table4(analyze(observations(recs))) is None


def test_renderers(analysis):
    g = table2(analysis)
    tex = to_latex(g)
    assert r"\begin{tabular}" in tex and r"$_{\pm" in tex and r"\textit{Low-Resource}" in tex and "`" not in tex and r"\texttt{finetune}" in tex
    rows = list(csv.DictReader(io.StringIO(to_csv(g))))
    assert len(rows) == sum(1 for r in g.rows for c in r[1:] if isinstance(c, Value))
    md = to_markdown(g)
    assert md.count("\n| ") == len(g.rows) + 1


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="known: welch"):
        Settings(test="ztest")
    with pytest.raises(ValueError):
        Settings(alpha=1.5)
