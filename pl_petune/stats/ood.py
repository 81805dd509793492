"""In-distribution vs out-of-distribution scores per method (issue 10; LP-FT's argument, Kumar et al. 2022).

Pure: plain run records and the report's :class:`~pl_petune.stats.analysis.Analysis` in, a
:class:`~pl_petune.stats.render.Grid` out (numpy only). Rows carry the labels and follow the order of Table 2
(the study's task labels, its column names and order), read from the analysis.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pl_petune.stats.analysis import Analysis
from pl_petune.stats.inputs import Column
from pl_petune.stats.render import Grid, Value


def ood_table(records: Sequence[Mapping[str, Any]], analysis: Analysis) -> Grid | None:
    """One row per (task, column) of ``analysis``: the held-out score and each recorded ``ood/<set>/<metric>``.

    Args:
        records: the complete run records the analysis was computed from; those without ``ood_metrics``, and
            those the analysis left out (filtered, NaN score, no usable seed), are not shown.
        analysis: the report's analysis: its task labels, column labels and order, std ddof, scale and digits.

    Returns:
        The grid (name ``ood``), or None when no reported record carries OOD metrics.
    """
    # a record is found by run key and column name: runs that differ only by a callback once shared a key
    where: dict[tuple[str, str], tuple[str, Column]] = {(o.run_key, o.column.method): key
                                                        for key, cell in analysis.cells.items() for o in cell}

    def found(r: Mapping[str, Any]) -> tuple[str, str]:
        return str(r.get("run_key", "")), str(r.get("method"))

    recs = [r for r in records if r.get("status", "complete") == "complete" and r.get("ood_metrics")
            and found(r) in where]
    if not recs:
        return None
    s = analysis.settings
    ood_keys = sorted({k for r in recs for k in r["ood_metrics"]})
    id_keys = sorted({f"test/{r['primary_metric']}" for r in recs})
    grid = Grid("ood", "In-distribution (held-out test) vs out-of-distribution scores",
                ["Task", "Method", "runs", *[f"ID {k}" for k in id_keys], *[f"OOD {k[4:]}" for k in ood_keys]])
    cells: dict[tuple[str, Column], list[Mapping[str, Any]]] = {}
    for r in recs:
        cells.setdefault(where[found(r)], []).append(r)

    def value(vals: list[float]) -> Value:
        if not vals:
            return Value(float("nan"), digits=s.digits)
        arr = s.scale * np.asarray(vals, dtype=float)
        std = float(arr.std(ddof=s.ddof)) if len(arr) > s.ddof else None
        return Value(float(arr.mean()), std, digits=s.digits)

    order = [(t, c) for t in analysis.tasks for c in analysis.columns if (t, c) in cells]
    for task, col in order:
        rs = cells[(task, col)]
        row: list[Any] = [analysis.task_label(task), analysis.label(col), str(len(rs))]
        csv: dict[str, Any] = {"task": task, "row": analysis.task_label(task), "column": analysis.label(col),
                               "method": col.method, "protocol": col.protocol, "variant": col.variant, "runs": len(rs)}
        for k, source in [(k, "test_metrics") for k in id_keys] + [(k, "ood_metrics") for k in ood_keys]:
            vals = [float(r[source][k]) for r in rs if k in r.get(source, {})]
            row.append(value(vals))
            csv[k] = float(np.mean(vals)) if vals else ""
        grid.rows.append(row)
        grid.csv_rows.append(csv)
    sets = sorted({f"{n} = {o.get('task')} {o.get('split')}" for r in recs for n, o in r.get("ood_sets", {}).items()})
    grid.notes.append("OOD: the same best-on-dev weights scored on other tasks' splits with labels mapped onto the "
                      "training task's (record field ood_sets)" + (f": {'; '.join(sets)}" if sets else ""))
    grid.notes.append(f"mean (± std over runs) × {s.scale:g}")
    return grid
