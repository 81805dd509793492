"""Stability figures of "Revisiting Parameter-Efficient Tuning" (Chen et al., EMNLP 2022), drawn from an
:class:`~pl_petune.stats.tables.Analysis` with matplotlib's Agg backend (no display needed).

- :func:`stability`: per-seed points with mean ± std per method and task (the paper's Figure 4).
- :func:`density`: score density curves by trainable-parameter scale (Figure 5).
- :func:`spread`: std over seeds against training steps or train size (the paper's finding that the number
  of training iterations drives instability).
- :func:`upper_bounds`: best-of-seeds relative to the baseline (Figure 3).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

from pl_petune.stats.core import Column, Obs, relative_upper_bound, summarize  # noqa: E402
from pl_petune.stats.tables import Analysis  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")


def _colors(columns: Sequence[Column]) -> dict[Column, tuple]:
    cmap = plt.get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(columns)}


def _grid(n: int, width: float = 3.6, height: float = 3.0, max_cols: int = 4):
    ncols = min(n, max_cols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stability(a: Analysis, path: str | os.PathLike) -> None:
    """Figure 4: one panel per task; each method's per-seed scores as points, its mean ± std as a diamond
    with an error bar. Leaky columns are labelled ``[leaky]`` and drawn hollow."""
    s = a.settings
    fig, axes = _grid(len(a.tasks))
    colors = _colors(a.columns)
    for ax, t in zip(axes, a.tasks):
        cols = [c for c in a.columns if (t, c) in a.cells]
        for x, c in enumerate(cols):
            ys = np.array([o.score for o in a.cells[(t, c)]]) * s.scale
            jitter = np.linspace(-0.18, 0.18, len(ys)) if len(ys) > 1 else np.zeros(1)
            face = "none" if c.leaky else colors[c]
            ax.scatter(x + jitter, ys, s=14, facecolors=face, edgecolors=colors[c], alpha=0.75, zorder=2)
            sm = summarize(ys, s.ddof)
            ax.errorbar(x + 0.32, sm.mean, yerr=0 if math.isnan(sm.std) else sm.std, fmt="D", color="black",
                        mfc="white", ms=6, capsize=4, zorder=3)
        ax.set_xticks(range(len(cols)), [a.label(c) for c in cols], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{t} ({a.metric[t]} x{s.scale:g})", fontsize=9)
        ax.set_xlim(-0.6, len(cols) - 0.3)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-seed scores; diamond: mean ± std", fontsize=10)
    _save(fig, path)


def _scale_groups(obs: Sequence[Obs]) -> dict[tuple[str, int | None], list[Obs]]:
    out: dict[tuple[str, int | None], list[Obs]] = {}
    for o in obs:
        out.setdefault((o.column.method + (" [leaky]" if o.column.leaky else ""), o.trainable_params), []).append(o)
    return out


def density(a: Analysis, path: str | os.PathLike, max_tasks: int = 8) -> None:
    """Figure 5: kernel density (scipy ``gaussian_kde``) of each method's scores per trainable-parameter
    scale, one panel per task; tasks where some method runs at several scales come first. A scale whose
    scores have no spread (or one run) is drawn as a vertical line at its value."""
    s = a.settings
    per_task = {t: _scale_groups([o for c in a.columns for o in a.cells.get((t, c), [])]) for t in a.tasks}
    multi = lambda t: len({m for m, _ in per_task[t]}) < len(per_task[t])  # noqa: E731
    tasks = sorted(a.tasks, key=lambda t: not multi(t))[:max_tasks]
    fig, axes = _grid(len(tasks))
    methods = sorted({m for t in tasks for m, _ in per_task[t]})
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(i % 10) for i, m in enumerate(methods)}
    for ax, t in zip(axes, tasks):
        groups = per_task[t]
        for m in methods:
            scales = sorted((p for mm, p in groups if mm == m), key=lambda p: (p is None, p or 0))
            for i, p in enumerate(scales):
                g = groups[(m, p)]
                ys = np.array([o.score for o in g]) * s.scale
                pct = g[0].trainable_percent
                label = m + (f" {pct:.3g}%" if pct is not None and len(scales) > 1 else "")
                ls = LINESTYLES[i % len(LINESTYLES)]
                if len(ys) < 2 or np.ptp(ys) == 0:
                    ax.axvline(ys.mean(), color=color[m], ls=ls, label=label + " (no spread)")
                    continue
                pad = 3 * ys.std()
                xs = np.linspace(ys.min() - pad, ys.max() + pad, 200)
                ax.plot(xs, sps.gaussian_kde(ys)(xs), color=color[m], ls=ls, label=label)
        ax.set_title(f"{t}", fontsize=9)
        ax.set_xlabel(f"{a.metric[t]} x{s.scale:g}", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("Score density by method and trainable-parameter scale", fontsize=10)
    _save(fig, path)


def spread(a: Analysis, path: str | os.PathLike, x: str = "steps") -> None:
    """Std over seeds (x scale) against mean training steps (``x="steps"``) or train size
    (``x="train_size"``): one point per task, method and train size, lines joining a method's points."""
    s = a.settings
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(a.columns)
    xs_all = []
    for c in a.columns:
        pts = []
        for t in a.tasks:
            by_size: dict = {}
            for o in a.cells.get((t, c), []):
                by_size.setdefault(o.train_size, []).append(o)
            for group in by_size.values():
                if len(group) < 2:
                    continue
                vals = [getattr(o, x) for o in group]
                if any(v is None for v in vals):
                    continue
                pts.append((float(np.mean(vals)), summarize([o.score for o in group], s.ddof).std * s.scale))
        if pts:
            pts.sort()
            xs_all += [p[0] for p in pts]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if not c.leaky else "o--",
                    color=colors[c], label=a.label(c), alpha=0.85)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("training steps (mean over seeds)" if x == "steps" else "train size")
    ax.set_ylabel(f"std over seeds (x{s.scale:g})")
    ax.set_title("Instability against " + ("training iterations" if x == "steps" else "data size"), fontsize=10)
    ax.grid(alpha=0.3)
    if xs_all:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no cell has 2+ runs with '{x}' recorded", ha="center", transform=ax.transAxes)
    _save(fig, path)


def upper_bounds(a: Analysis, path: str | os.PathLike) -> None:
    """Figure 3: bars of best-of-seeds relative to the baseline (percent, positive = better), per task."""
    cols = [c for c in a.columns if a.baseline_of.get(c) is not None]
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.35 * len(a.tasks) * max(1, len(cols)) + 2)), 4.0))
    colors = _colors(a.columns)
    width = 0.8 / max(1, len(cols))
    for j, c in enumerate(cols):
        base = a.baseline_of[c]
        vals = []
        for t in a.tasks:
            mine, theirs = a.cells.get((t, c)), a.cells.get((t, base))
            vals.append(relative_upper_bound([o.score for o in mine], [o.score for o in theirs], a.higher[t])
                        if mine and theirs else np.nan)
        ax.bar(np.arange(len(a.tasks)) + (j - (len(cols) - 1) / 2) * width, vals, width, color=colors[c],
               label=a.label(c), hatch="//" if c.leaky else None)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(a.tasks)), a.tasks, rotation=30, ha="right")
    ax.set_ylabel(f"best-of-seeds vs {a.settings.baseline} (%)")
    ax.set_title("Upper bounds relative to " + a.settings.baseline, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if cols:
        ax.legend(fontsize=7)
    _save(fig, path)
