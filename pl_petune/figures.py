"""Stability figures of "Revisiting Parameter-Efficient Tuning" (Chen et al., EMNLP 2022), drawn from an
:class:`~pl_petune.stats.tables.Analysis` with matplotlib's Agg backend (no display needed).

- :func:`stability`: per-seed points with mean ± std per method and task (the paper's Figure 4).
- :func:`density`: score distributions by trainable-parameter scale (Figure 5): a kernel density inside the
  metric's range where a curve has enough runs, a histogram where it has not.
- :func:`spread`: std over seeds against training steps or train size (the paper's finding that the number
  of training iterations drives instability).
- :func:`upper_bounds`: best-of-seeds relative to the baseline (Figure 3), one panel per band with its own
  scale and the values printed on the bars.

Every figure colours a method the same way (:func:`palette`); :func:`draw_all` draws them once and
:func:`save` writes each format (PNG, SVG, PDF) atomically. A figure with nothing to show is not drawn.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pl_petune.record_checks import METRIC_RANGES  # noqa: E402
from pl_petune.stats.analysis import Analysis  # noqa: E402
from pl_petune.stats.core import Column, Obs, relative_upper_bound, summarize  # noqa: E402
from pl_petune.stats.labels import BAND_TITLES, BANDS, METHOD_ORDER, method_rank  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")
# Fixed colours for the paper's methods (tab10 entries), so FT is the same blue in every report.
PAPER_COLORS = {"finetune": 0, "adapter": 1, "prefix": 2, "lora": 3, "bitfit": 4}
# Fewer runs than this per curve: a histogram, not a kernel density (5 seeds cannot support one).
MIN_KDE_RUNS = 10
FIGURES = ("fig_stability", "fig_density", "fig_spread", "upper_bound")
WHY_EMPTY = {
    "fig_stability": "no cell has a score",
    "fig_density": "no cell has a score",
    "fig_spread": "no cell has 2+ runs with the x quantity (steps or train_size) recorded",
    "upper_bound": "no method shares a task with the baseline",
}
plt.rcParams["svg.fonttype"] = "none"  # text stays text in SVG: smaller files, searchable labels
plt.rcParams["svg.hashsalt"] = "pl_petune"  # fixed element ids: the same analysis gives the same SVG bytes


def palette(a: Analysis) -> dict[str, tuple]:
    """One colour per method (column name), the same in every figure; the paper's methods keep fixed colours."""
    cmap = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(c.method for c in a.columns))
    out: dict[str, tuple] = {}
    taken = set()
    for m in methods:
        rank = method_rank(m, a.settings.method_of.get(m))
        if rank < len(METHOD_ORDER):
            idx = PAPER_COLORS[METHOD_ORDER[rank]]
            if idx not in taken:
                out[m] = cmap(idx)
                taken.add(idx)
    free = [i for i in range(10) if i not in taken] + [i for i in range(10) if i in taken]
    for m in methods:
        if m not in out:
            out[m] = cmap(free.pop(0) if free else len(out) % 10)
    return out


def _grid(n: int, width: float = 3.4, height: float = 2.8, max_cols: int = 4) -> tuple[Figure, list]:
    ncols = max(1, min(n, max_cols))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _scaled_range(a: Analysis, task: str) -> tuple[float, float]:
    lo, hi = METRIC_RANGES.get(a.metric[task], (-math.inf, math.inf))
    return lo * a.settings.scale, hi * a.settings.scale


def _title(a: Analysis, task: str) -> str:
    return f"{a.task_label(task)} ({a.metric[task]} x{a.settings.scale:g})"


def render(fig: Figure, fmt: str) -> bytes:
    """``fig`` as the bytes of a ``png``, ``svg`` or ``pdf`` file (no creation date: the same analysis gives the
    same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, metadata=_metadata(f".{fmt}"))
    return buf.getvalue()


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half of one."""
    from pl_petune.records import atomic_write_bytes

    return atomic_write_bytes(path, data)


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix), atomically."""
    path = Path(path)
    return write_bytes(render(fig, path.suffix.lstrip(".")), path)


def _metadata(suffix: str) -> dict[str, Any]:
    # No creation date: the same store gives byte-identical vector files.
    return {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(suffix, {})


def draw_all(a: Analysis, spread_x: str = "steps") -> dict[str, Figure | None]:
    """Every figure of the report, by file stem; None where there is nothing to draw."""
    colors = palette(a)
    return {"fig_stability": stability(a, colors=colors), "fig_density": density(a, colors=colors),
            "fig_spread": spread(a, x=spread_x, colors=colors), "upper_bound": upper_bounds(a, colors=colors)}


def close_all(figs: Mapping[str, Figure | None]) -> None:
    for fig in figs.values():
        if fig is not None:
            plt.close(fig)


def _finish(fig: Figure, path: str | os.PathLike | None, rect: tuple | None = None) -> Figure:
    fig.tight_layout(rect=rect)
    if path is not None:
        save(fig, path)
        plt.close(fig)
    return fig


def _legend(fig: Figure, a: Analysis, colors: Mapping[str, tuple], columns: Sequence[Column]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=colors[c.method], mfc="none" if c.leaky else colors[c.method],
                      label=a.label(c)) for c in columns]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def stability(a: Analysis, path: str | os.PathLike | None = None,
              colors: Mapping[str, tuple] | None = None) -> Figure | None:
    """Figure 4: one panel per task; each method's per-seed scores as points, its mean ± std as a diamond
    with an error bar. Leaky columns are labelled ``[leaky]`` and drawn hollow."""
    if not a.cells:
        return None
    s = a.settings
    colors = colors or palette(a)
    fig, axes = _grid(len(a.tasks))
    for ax, t in zip(axes, a.tasks):
        cols = [c for c in a.columns if (t, c) in a.cells]
        for x, c in enumerate(cols):
            ys = np.array([o.score for o in a.cells[(t, c)]]) * s.scale
            jitter = np.linspace(-0.18, 0.18, len(ys)) if len(ys) > 1 else np.zeros(1)
            color = colors[c.method]
            ax.scatter(x + jitter, ys, s=12, facecolors="none" if c.leaky else color, edgecolors=color, alpha=0.75,
                       zorder=2)
            sm = summarize(ys, s.ddof)  # type: ignore[arg-type]
            ax.errorbar(x + 0.32, sm.mean, yerr=0 if math.isnan(sm.std) else sm.std, fmt="D", color="black",
                        mfc="white", ms=5, capsize=3, zorder=3)
        ax.set_xticks(range(len(cols)), [a.label(c) for c in cols], rotation=30, ha="right", fontsize=7)
        ax.set_title(_title(a, t), fontsize=9)
        ax.set_xlim(-0.6, len(cols) - 0.3)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-seed scores; diamond: mean ± std", fontsize=10)
    return _finish(fig, path)


def _kde(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of ``ys`` at ``xs`` with Scott's bandwidth (what ``scipy.stats.gaussian_kde``
    computes in 1-D, checked by a test; written out because scipy's costs ~30 ms a curve through its
    multivariate path, most of a report's time)."""
    h = float(np.std(ys, ddof=1)) * len(ys) ** (-1 / 5)
    u = (xs[:, None] - ys[None, :]) / h
    return np.exp(-0.5 * u * u).sum(axis=1) / (len(ys) * h * math.sqrt(2 * math.pi))


def _scale_groups(obs: Sequence[Obs]) -> dict[tuple[Column, int | None], list[Obs]]:
    out: dict[tuple[Column, int | None], list[Obs]] = {}
    for o in obs:
        out.setdefault((o.column, o.trainable_params), []).append(o)
    return out


def density(a: Analysis, path: str | os.PathLike | None = None,
            colors: Mapping[str, tuple] | None = None) -> Figure | None:
    """Figure 5: each method's score distribution per trainable-parameter scale, one panel per task (every
    task). A curve with at least :data:`MIN_KDE_RUNS` runs is a Gaussian kernel density (scipy
    ``gaussian_kde``) evaluated only inside the metric's range; fewer runs give a step histogram; no spread
    gives a vertical line at the value."""
    if not a.cells:
        return None
    s = a.settings
    colors = colors or palette(a)
    fig, axes = _grid(len(a.tasks))
    for ax, t in zip(axes, a.tasks):
        groups = _scale_groups([o for c in a.columns for o in a.cells.get((t, c), [])])
        lo, hi = _scaled_range(a, t)
        all_ys = np.array([o.score for g in groups.values() for o in g]) * s.scale
        pad = max(0.5, 0.15 * float(np.ptp(all_ys)))
        x0, x1 = max(lo, all_ys.min() - pad), min(hi, all_ys.max() + pad)
        bins = np.linspace(x0, x1, 13) if x1 > x0 else 1
        scales_of: dict[Column, list] = {}
        for (c, p) in groups:
            scales_of.setdefault(c, []).append(p)
        kinds = set()
        for (c, p), g in groups.items():
            ys = np.array([o.score for o in g]) * s.scale
            scales = sorted(scales_of[c], key=lambda q: (q is None, q or 0))
            ls = LINESTYLES[scales.index(p) % len(LINESTYLES)]
            pct = g[0].trainable_percent
            label = a.label(c) + (f" {pct:.3g}%" if pct is not None and len(scales) > 1 else "")
            color = colors[c.method]
            if len(ys) < 2 or np.ptp(ys) == 0:
                ax.axvline(float(ys.mean()), color=color, ls=ls, label=label + " (no spread)")
                kinds.add("line")
            elif len(ys) < MIN_KDE_RUNS:
                ax.hist(ys, bins=bins, histtype="step", color=color, ls=ls, density=True,
                        label=f"{label} (n={len(ys)})")
                kinds.add("hist")
            else:
                xs = np.linspace(x0, x1, 200)
                ax.plot(xs, _kde(ys, xs), color=color, ls=ls, label=f"{label} (n={len(ys)})")
                kinds.add("kde")
        ax.set_xlim(x0, x1)
        ax.set_title(_title(a, t), fontsize=9)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        if any(len(v) > 1 for v in scales_of.values()) or "line" in kinds:
            ax.legend(fontsize=6)
    _legend(fig, a, colors, a.columns)
    fig.suptitle(f"Score distribution by method and trainable-parameter scale (KDE from {MIN_KDE_RUNS} runs, "
                 "else a histogram; clipped to the metric's range)", fontsize=9)
    return _finish(fig, path, rect=(0, 0.04, 1, 1))


def spread(a: Analysis, path: str | os.PathLike | None = None, x: str = "steps",
           colors: Mapping[str, tuple] | None = None) -> Figure | None:
    """Std over seeds (x scale) against mean training steps (``x="steps"``) or train size
    (``x="train_size"``): one point per task, method and train size, lines joining a method's points."""
    s = a.settings
    colors = colors or palette(a)
    series = []
    for c in a.columns:
        pts = []
        for t in a.tasks:
            by_size: dict = {}
            for o in a.cells.get((t, c), []):
                by_size.setdefault(o.train_size, []).append(o)
            for group in by_size.values():
                vals = [getattr(o, x) for o in group]
                if len(group) < 2 or any(v is None for v in vals):
                    continue
                pts.append((float(np.mean(vals)), summarize([o.score for o in group], s.ddof).std * s.scale))
        if pts:
            series.append((c, sorted(pts)))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs_all = [p[0] for _, pts in series for p in pts]
    for c, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if not c.leaky else "o--",
                color=colors[c.method], mfc="none" if c.leaky else colors[c.method], label=a.label(c), alpha=0.85)
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("training steps (mean over seeds)" if x == "steps" else "train size")
    ax.set_ylabel(f"std over seeds (x{s.scale:g})")
    ax.set_title("Instability against " + ("training iterations" if x == "steps" else "data size"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, path)


def upper_bounds(a: Analysis, path: str | os.PathLike | None = None,
                 colors: Mapping[str, tuple] | None = None) -> Figure | None:
    """Figure 3: bars of best-of-seeds relative to the baseline (percent, positive = better), one panel per
    band with its own y scale (a low-resource band's ±10 % would flatten a high band's ±0.5 %), values on
    the bars."""
    cols = [c for c in a.columns if a.baseline_of.get(c) is not None]
    colors = colors or palette(a)
    panels = []
    for band in (*BANDS, None):
        tasks = [t for t in a.tasks if a.band_of[t] == band]
        vals = {c: [relative_upper_bound([o.score for o in a.cells[(t, c)]],
                                         [o.score for o in a.cells[(t, a.baseline_of[c])]], a.higher[t])  # type: ignore[index]
                    if (t, c) in a.cells and (t, a.baseline_of[c]) in a.cells else np.nan for t in tasks]
                for c in cols}
        if tasks and any(np.isfinite(v).any() for v in map(np.asarray, vals.values())):
            panels.append((band, tasks, vals))
    if not panels:
        return None
    widths = [max(2, len(tasks)) for _, tasks, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(16.0, 1.2 + sum(widths) * (0.45 + 0.22 * len(cols))), 4.2),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    width = 0.8 / max(1, len(cols))
    for ax, (band, tasks, vals) in zip(axes[0], panels):
        for j, c in enumerate(cols):
            bars = ax.bar(np.arange(len(tasks)) + (j - (len(cols) - 1) / 2) * width, vals[c], width,
                          color=colors[c.method], label=a.label(c), hatch="//" if c.leaky else None)
            ax.bar_label(bars, labels=["" if not np.isfinite(v) else f"{v:+.1f}" for v in vals[c]], fontsize=6,
                         padding=1)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(tasks)), [a.task_label(t) for t in tasks], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{BAND_TITLES.get(band, band)}-resource" if band else "Other tasks", fontsize=9)
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"best of seeds vs {a.settings.rename.get(a.settings.baseline, a.settings.baseline)} (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Upper bounds relative to " + a.settings.rename.get(a.settings.baseline, a.settings.baseline)
                 + " (each band on its own scale)", fontsize=10)
    return _finish(fig, path)
