"""Figures a paper can use: one palette, vector files beside PNG, every task, scores inside the metric's range,
a histogram where a density has too few runs, per-band upper bounds with values, no empty files."""

from __future__ import annotations

import re

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy import stats as sps

from stats_records import make_record, study
from pl_petune import figures
from pl_petune.cli import main as cli_main
from pl_petune.stats.core import observations
from pl_petune.stats.tables import analyze
from pl_petune.store import Store


@pytest.fixture(scope="module")
def analysis():
    recs = study(tasks=("cb", "copa", "rte", "sst2", "qnli"), methods=("finetune", "lora", "adapter", "bitfit"),
                 seeds=range(1, 6))
    recs += [make_record("cb", "lora", 0.97 + s / 1000, s + 100) for s in range(12)]  # a 12-run cell near 100
    return analyze(observations(recs))


def _density_colors(fig):
    out: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label().split(" ")[0], set()).add(to_hex(line.get_color()))
        for patch in ax.patches:  # step histograms: the colour is the edge
            if patch.get_label() and not patch.get_label().startswith("_"):
                out.setdefault(patch.get_label().split(" ")[0], set()).add(to_hex(patch.get_edgecolor()))
    return out


def test_one_colour_per_method_in_every_figure(analysis):
    pal = {m: to_hex(c) for m, c in figures.palette(analysis).items()}
    assert len(set(pal.values())) == len(pal)
    assert pal["finetune"] == to_hex(figures.plt.get_cmap("tab10")(0))  # fixed for the paper's methods
    drawn = figures.draw_all(analysis)
    dens = _density_colors(drawn["fig_density"])
    for m in ("finetune", "lora", "adapter", "bitfit"):
        assert dens[m] == {pal[m]}, m
    ub = drawn["upper_bound"]
    for ax in ub.axes:
        for container in ax.containers:
            label = container.get_label()
            assert {to_hex(p.get_facecolor()) for p in container.patches} == {pal[label]}
    stab = set()
    for ax in drawn["fig_stability"].axes:
        for coll in ax.collections:
            stab |= {to_hex(c) for c in coll.get_edgecolors()}
    assert stab <= set(pal.values()) | {"#000000"}
    figures.close_all(drawn)


def test_density_shows_every_task_within_the_metric_range(analysis):
    fig = figures.density(analysis)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert [t.split(" ")[0] for t in titles] == ["CB", "COPA", "RTE", "SST-2", "QNLI"]  # high-resource kept
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert lo >= 0 and hi <= 100
        for line in ax.get_lines():
            xs = np.asarray(line.get_xdata(), dtype=float)
            assert xs.min() >= 0 and xs.max() <= 100
    cb = fig.axes[0]
    labels = [ln.get_label() for ln in cb.get_lines()] + [p.get_label() for p in cb.patches]
    assert any(lab.startswith("lora") and "(n=17)" in lab for lab in labels)  # 17 runs: a density curve
    assert any(p.get_label().startswith("finetune (n=5)") for p in cb.patches), "5 runs: a histogram"
    figures.plt.close(fig)


def test_kde_equals_scipys():
    ys = np.array([61.0, 63.5, 60.2, 66.1, 64.0, 59.9, 62.2, 65.5, 60.8, 63.3])
    xs = np.linspace(55, 70, 50)
    assert figures._kde(ys, xs) == pytest.approx(sps.gaussian_kde(ys)(xs), rel=1e-10)


def test_upper_bound_has_a_panel_per_band_with_values(analysis):
    fig = figures.upper_bounds(analysis)
    assert [ax.get_title() for ax in fig.axes] == ["Low-resource", "Medium-resource", "High-resource"]
    high = fig.axes[2]
    texts = [t.get_text() for t in high.texts]
    assert texts and all(re.fullmatch(r"[+-]\d+\.\d|", t) for t in texts)
    lo, hi = high.get_ylim()
    assert hi - lo < 20, "the high band keeps its own scale"
    figures.plt.close(fig)


def test_report_writes_vector_files_beside_png_and_no_empty_figure(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    store.put_many([make_record("cb", m, 0.6 + s / 100, s, steps=None) for m in ("finetune", "lora")
                    for s in range(1, 4)])
    out = tmp_path / "r"
    assert cli_main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--format", "png,svg,pdf"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "fig_spread.png" not in names, "nothing to draw: no file"
    assert "no figure fig_spread" in capsys.readouterr().err
    for stem in ("fig_stability", "fig_density", "upper_bound"):
        png, svg, pdf = (out / f"{stem}.{ext}" for ext in ("png", "svg", "pdf"))
        img = mpimg.imread(png)
        assert np.std(img[..., :3]) > 0.05, f"{stem} looks blank"
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
        assert pdf.read_bytes()[:5] == b"%PDF-"
    first = (out / "fig_density.svg").read_bytes()
    assert cli_main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--format", "svg"]) == 0
    assert (out / "fig_density.svg").read_bytes() == first, "same store, same bytes"
