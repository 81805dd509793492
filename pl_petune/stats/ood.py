"""In-distribution vs out-of-distribution scores per method (issue 10; LP-FT's argument, Kumar et al. 2022).

Pure: plain run records in, a :class:`~pl_petune.stats.tables.Grid` out (numpy only).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pl_petune.stats.tables import Grid, Value


def ood_table(records: Sequence[Mapping[str, Any]], ddof: int = 1, digits: int = 1) -> Grid | None:
    """One row per (task, method): the held-out score and each recorded ``ood/<set>/<metric>``, ×100.

    Args:
        records: complete run records; those without ``ood_metrics`` are left out.
        ddof: delta degrees of freedom of the std (shown when a cell has more than one run).
        digits: decimals printed.

    Returns:
        The grid (name ``ood``), or None when no record carries OOD metrics.
    """
    recs = [r for r in records if r.get("status", "complete") == "complete" and r.get("ood_metrics")]
    if not recs:
        return None
    ood_keys = sorted({k for r in recs for k in r["ood_metrics"]})
    id_keys = sorted({f"test/{r['primary_metric']}" for r in recs})
    grid = Grid("ood", "In-distribution (held-out test) vs out-of-distribution scores",
                ["task", "method", "runs", *[f"ID {k}" for k in id_keys], *[f"OOD {k[4:]}" for k in ood_keys]])
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in recs:
        cells.setdefault((r["task"], r["method"]), []).append(r)

    def value(vals: list[float]) -> Value:
        if not vals:
            return Value(float("nan"), digits=digits)
        arr = 100 * np.asarray(vals, dtype=float)
        std = float(arr.std(ddof=ddof)) if len(arr) > ddof else None
        return Value(float(arr.mean()), std, digits=digits)

    for (task, method), rs in sorted(cells.items()):
        row: list[Any] = [task, method, str(len(rs))]
        csv: dict[str, Any] = {"task": task, "method": method, "runs": len(rs)}
        for k, source in [(k, "test_metrics") for k in id_keys] + [(k, "ood_metrics") for k in ood_keys]:
            vals = [float(r[source][k]) for r in rs if k in r.get(source, {})]
            row.append(value(vals))
            csv[k] = float(np.mean(vals)) if vals else ""
        grid.rows.append(row)
        grid.csv_rows.append(csv)
    sets = sorted({f"{n} = {o.get('task')} {o.get('split')}" for r in recs for n, o in r.get("ood_sets", {}).items()})
    grid.notes.append("OOD: the same best-on-dev weights scored on other tasks' splits with labels mapped onto the "
                      "training task's (record field ood_sets)" + (f": {'; '.join(sets)}" if sets else ""))
    grid.notes.append("mean (± std over runs) × 100")
    return grid
