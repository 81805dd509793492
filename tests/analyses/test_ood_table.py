"""The ID vs OOD table: pure, golden numbers."""

from __future__ import annotations

from pl_petune.stats.ood import ood_table
from pl_petune.stats.tables import to_markdown


def _rec(method: str, test: float, ood: float | None) -> dict:
    r = {"status": "complete", "task": "rte", "method": method, "primary_metric": "accuracy",
         "test_metrics": {"test/accuracy": test}}
    if ood is not None:
        r["ood_metrics"] = {"ood/cb/accuracy": ood}
        r["ood_sets"] = {"cb": {"task": "cb", "split": "dev"}}
    return r


def test_ood_table_rows_means_and_stds():
    grid = ood_table([_rec("FT", 0.6, 0.5), _rec("FT", 0.7, 0.3), _rec("LP-FT", 0.65, 0.55), _rec("x", 0.9, None)])
    assert grid.header == ["task", "method", "runs", "ID test/accuracy", "OOD cb/accuracy"]
    md = to_markdown(grid)
    assert "| rte | FT | 2 | 65.0±7.1 | 40.0±14.1 |" in md
    assert "| rte | LP-FT | 1 | 65.0 | 55.0 |" in md and "| x |" not in md  # runs without OOD are left out
    assert "cb = cb dev" in md
    assert grid.csv_rows[0]["ood/cb/accuracy"] == 0.4


def test_no_ood_records_no_table():
    assert ood_table([_rec("FT", 0.6, None)]) is None
