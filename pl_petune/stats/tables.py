"""The paper's tables as data: :func:`table2`, :func:`table3`, :func:`table4` and :func:`upper_bound` lay out
an :class:`~pl_petune.stats.analysis.Analysis` as "Revisiting PETuning" prints them (Chen et al., EMNLP 2022:
Tables 2-4 and the upper bounds of Figure 3); :mod:`pl_petune.stats.render` renders the grids.

The names of the analysis, labels and rendering modules stay importable from here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pl_petune.stats.analysis import TEST_NAMES, Analysis, Settings, analyze  # noqa: F401
from pl_petune.stats.core import REGIMES, best, relative_upper_bound, summarize
from pl_petune.stats.labels import (  # noqa: F401
    BAND_TITLES,
    BANDS,
    HEADLINES,
    METHOD_ALIASES,
    METHOD_ORDER,
    METRIC_TITLES,
    method_rank,
    task_label,
)
from pl_petune.stats.render import (  # noqa: F401
    ARROWS,
    TRENDS,
    Grid,
    Trend,
    Value,
    _tex_escape,
    to_csv,
    to_latex,
    to_markdown,
)
from pl_petune.stats.significance import Comparison

LEAKY_NOTE = ("[leaky]: runs of a leaky protocol (`leaky`, `dev_split_leaky`) chose their checkpoint on the same set "
              "they report, so "
              "their scores are optimistic (Revisiting PETuning, Table 1); do not compare them with the others.")



def _p_fields(c: Comparison | None) -> dict[str, Any]:
    if c is None:
        return {"p_better": "", "p_worse": "", "p_two_sided": "", "test_note": ""}
    return {"p_better": c.p_better, "p_worse": c.p_worse, "p_two_sided": c.p_two, "test_note": c.note}


def table2(a: Analysis) -> Grid:
    """Table 2 layout: task x method mean±std over seeds, arrows against the baseline, band averages.

    Band rows average the tasks each column has; a † marks a column averaged over fewer of the band's tasks
    than the band holds (a method missing on some tasks). Under the table: the test, n per cell, notes.
    """
    s = a.settings
    g = Grid("table2", "Table 2: mean ± std over seeds (scores x%g)" % s.scale,
             ["Task"] + [a.label(c) for c in a.columns])
    ncount = Grid("table2_n", "n", ["Task"] + [a.label(c) for c in a.columns])
    partial = False
    current: Any = object()
    for t in a.tasks:
        if a.band_of[t] != current:
            if current in a.band_tasks:
                partial |= _band_row(a, g, current)
            current = a.band_of[t]
            g.section(f"{BAND_TITLES.get(current, current)}-Resource" if current else "Other tasks")
        row: list[Any] = [a.task_label(t)]
        nrow: list[Any] = [a.task_label(t)]
        for c in a.columns:
            cell = a.cells.get((t, c))
            if not cell:
                row.append("–")
                nrow.append("0")
                continue
            sm = summarize([o.score for o in cell], s.ddof)
            v = a.verdicts.get((t, c), 0)
            row.append(Value(sm.mean * s.scale, sm.std * s.scale, v, digits=s.digits))
            nrow.append(str(sm.n))
            comp = a.comparisons.get((t, c))
            g.csv_rows.append({"row": a.task_label(t), "task": t, "kind": "task", "band": a.band_of[t] or "",
                               "metric": a.metric[t], "column": a.label(c),
                               "higher_is_better": a.higher[t], "method": c.method, "protocol": c.protocol,
                               "variant": c.variant, "leaky": c.leaky, "n": sm.n, "mean": sm.mean * s.scale,
                               "std": sm.std * s.scale, "verdict": v, **_p_fields(comp)})
        g.rows.append(row)
        ncount.rows.append(nrow)
    if current in a.band_tasks:
        partial |= _band_row(a, g, current)
    if len(a.band_tasks) > 2 or None in a.band_of.values():
        partial |= _band_row(a, g, "all")
    counts = Counter(int(n) for r in ncount.rows for n in r[1:] if n != "0")
    common = counts.most_common(1)[0][0]
    odd = [f"{r[0]} / {a.label(c)} = {n}" for r in ncount.rows for c, n in zip(a.columns, r[1:])
           if n not in ("0", str(common))]
    g.notes.append(s.describe())
    g.notes.append("Scores: " + ", ".join(f"{a.task_label(t)} {METRIC_TITLES.get(a.metric[t], a.metric[t])}"
                                          for t in a.tasks)
                   + (" (headline metrics named by the study: " + ", ".join(f"{k}={v}" for k, v in s.headline.items())
                      + ")" if s.headline else "") + f"; x{s.scale:g}.")
    g.notes.append(f"n per cell: {common} runs (seeds)" + ("; except " + ", ".join(odd) if odd else " in every cell")
                   + ". Band rows: n = seeds shared by the band's tasks.")
    spreads: dict[str, list[str]] = {}
    for (b, c), avg in a.bands.items():
        if b != "all":
            spreads.setdefault(avg.spread, []).append(f"{BAND_TITLES.get(b, b)} / {a.label(c)}")
    how = {"per-seed": "std over seeds of the per-seed band average (seeds shared by all the band's tasks)",
           "independent": "sqrt(sum of the task variances) / k (fewer than 2 seeds shared: tasks taken as "
                          "independent)"}
    g.notes.append(f"Std: {'sample (ddof=1)' if s.ddof == 1 else f'ddof={s.ddof}'}. Band rows: plain mean of the "
                   "task means ± " + ("; ".join(
                       f"{how[k]}" + (f" for {', '.join(v)}" if len(spreads) > 1 else "") for k, v in spreads.items())
                       or "no spread") + ". Avg. (All): plain mean of every task mean, no spread or test (as the "
                   "paper prints it; the CSV has its spread).")
    if partial:
        g.notes.append("†: averaged over fewer of the band's tasks (method missing on some); its test uses "
                       "only the tasks it shares with the baseline.")
    if a.any_leaky:
        g.notes.append(LEAKY_NOTE)
    untested = sorted({c.note for c in a.comparisons.values() if c.note.startswith("no test")})
    if untested:
        g.notes.append("Untested cells: " + "; ".join(untested) + ".")
    g.notes += a.duplicates
    g.notes += a.dropped
    return g


def _band_row(a: Analysis, g: Grid, band: str) -> bool:
    s = a.settings
    label = "Avg. (All)" if band == "all" else f"Avg. ({BAND_TITLES.get(band, band)})"
    row: list[Any] = [label]
    partial = False
    for c in a.columns:
        avg = a.bands.get((band, c))
        if avg is None:
            row.append("–")
            continue
        mark = "†" if len(avg.tasks) < len(a.band_tasks[band]) else ""
        partial |= bool(mark)
        v = a.band_verdicts.get((band, c), 0)
        if band == "all":
            row.append(Value(avg.mean * s.scale, None, 0, mark, s.digits))
        else:
            row.append(Value(avg.mean * s.scale, avg.std * s.scale, v, mark, s.digits))
        g.csv_rows.append({"row": label, "kind": "band", "band": band, "column": a.label(c), "method": c.method,
                           "protocol": c.protocol,
                           "variant": c.variant, "leaky": c.leaky, "n": avg.n, "mean": avg.mean * s.scale,
                           "std": avg.std * s.scale, "verdict": v, "tasks": " ".join(avg.tasks),
                           "spread": avg.spread, **_p_fields(a.band_comparisons.get((band, c)))})
    g.rows.append(row)
    return partial


def table3(a: Analysis) -> Grid:
    """Table 3 layout: per method and band, ↗ (significantly better than the baseline), → (no significant
    difference) or ↘ (worse), from the band rows of Table 2."""
    bands = [b for b in BANDS if b in a.band_tasks]
    g = Grid("table3", "Table 3: band-level comparison with "
             f"{a.settings.rename.get(a.settings.baseline, a.settings.baseline)}",
             ["Method"] + [BAND_TITLES[b] for b in bands])
    for c in a.columns:
        if a.baseline_of.get(c) is None:
            continue
        row: list[Any] = [a.label(c)]
        for b in bands:
            comp = a.band_comparisons.get((b, c))
            v = None if comp is None or not comp.tested else a.band_verdicts[(b, c)]
            row.append(Trend(v))
            g.csv_rows.append({"method": c.method, "protocol": c.protocol, "variant": c.variant, "leaky": c.leaky,
                               "band": b, "trend": {1: "better", 0: "no difference", -1: "worse", None: "n/a"}[v],
                               **_p_fields(comp)})
        g.rows.append(row)
    g.notes.append(a.settings.describe().replace("↑/↓: significantly better/worse.",
                                                 "↗/→/↘: better / no significant difference / worse."))
    g.notes.append("Each band compares per-seed band averages over the tasks both methods have (n = seeds those "
                   "tasks share, as in Table 2's band rows; the CSV has each p-value); n/a: no test.")
    if any(c.leaky and a.baseline_of.get(c) is not None for c in a.columns):
        g.notes.append(LEAKY_NOTE)
    return g


def table4(a: Analysis) -> Grid | None:
    """Table 4 layout: mean±std over weight-init (WI), data-order (DO) and global seeds, per task and
    method; None when no cell holds a weight-init or data-order series."""
    keys = [k for k, ser in a.series.items() if "weight-init" in ser or "data-order" in ser]
    if not keys:
        return None
    s = a.settings
    g = Grid("table4", "Table 4: seeds controlling weight init (WI), data order (DO), or both (Global)",
             ["Task / method", "WI", "DO", "Global"])
    for t in a.tasks:
        for c in a.columns:
            if (t, c) not in keys:
                continue
            row: list[Any] = [f"{a.task_label(t)} / {a.label(c)}"]
            for regime in REGIMES:
                ser = a.series[(t, c)].get(regime)
                if not ser:
                    row.append("–")
                    continue
                sm = summarize([o.score for o in ser], s.ddof)
                row.append(Value(sm.mean * s.scale, sm.std * s.scale, digits=s.digits, mark=f" (n={sm.n})"))
                g.csv_rows.append({"task": t, "method": c.method, "protocol": c.protocol, "variant": c.variant,
                                   "leaky": c.leaky, "regime": regime, "n": sm.n, "mean": sm.mean * s.scale,
                                   "std": sm.std * s.scale})
            g.rows.append(row)
    g.notes.append("WI: init seed varies, data seed fixed; DO: data seed varies, init seed fixed; Global: one "
                   "seed drives both (seed_mode tied, or init = data). A run can belong to several series.")
    if any(c.leaky for _, c in keys):
        g.notes.append(LEAKY_NOTE)
    return g


def upper_bound(a: Analysis) -> Grid:
    """Figure 3 as a table: best-of-seeds of each method relative to the baseline's, in percent
    (positive = better for the metric)."""
    cols = [c for c in a.columns if a.baseline_of.get(c) is not None]
    g = Grid("upper_bound", "Upper bounds: best of seeds relative to "
             f"{a.settings.rename.get(a.settings.baseline, a.settings.baseline)} (%)",
             ["Task"] + [a.label(c) for c in cols])
    for t in a.tasks:
        row: list[Any] = [a.task_label(t)]
        for c in cols:
            base = a.baseline_of[c]
            mine, theirs = a.cells.get((t, c)), a.cells.get((t, base))  # type: ignore[arg-type]
            if not mine or not theirs:
                row.append("–")
                continue
            sc, bc = [o.score for o in mine], [o.score for o in theirs]
            rel = relative_upper_bound(sc, bc, a.higher[t])
            row.append(Value(rel, digits=a.settings.digits, signed=True))
            g.csv_rows.append({"task": t, "method": c.method, "protocol": c.protocol, "variant": c.variant,
                               "leaky": c.leaky, "n": len(sc), "n_base": len(bc),
                               "best": best(sc, a.higher[t]) * a.settings.scale,
                               "best_base": best(bc, a.higher[t]) * a.settings.scale, "relative_pct": rel})
        g.rows.append(row)
    g.notes.append("100 x (best(method) - best(baseline)) / |best(baseline)|, sign flipped for lower-is-better "
                   "metrics; best = max over seeds (min when lower is better).")
    ns = Counter(len(obs) for obs in a.cells.values())
    g.notes.append("n per cell (runs the best is taken over): " + ", ".join(
        f"{n} in {k} cell{'s' if k > 1 else ''}" for n, k in sorted(ns.items())) + ".")
    if any(c.leaky for c in cols):
        g.notes.append(LEAKY_NOTE)
    return g
