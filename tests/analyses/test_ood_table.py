"""The ID vs OOD table: pure, golden numbers, with Table 2's labels and order."""

from __future__ import annotations

from pl_petune.stats.core import observations
from pl_petune.stats.ood import ood_table
from pl_petune.stats.tables import Settings, analyze, to_markdown


def _rec(method: str, test: float, ood: float | None, seed: int = 1) -> dict:
    r = {"status": "complete", "run_key": f"{method}-{seed}", "task": "rte", "method": method,
         "primary_metric": "accuracy", "higher_is_better": True, "protocol": "train_split", "init_seed": seed,
         "data_seed": seed, "test_metrics": {"test/accuracy": test}}
    if ood is not None:
        r["ood_metrics"] = {"ood/cb/accuracy": ood}
        r["ood_sets"] = {"cb": {"task": "cb", "split": "dev"}}
    return r


def _table(records, **settings):
    return ood_table(records, analyze(observations(records), Settings(**settings)))


def test_ood_table_rows_means_and_stds():
    grid = _table([_rec("FT", 0.6, 0.5), _rec("FT", 0.7, 0.3, seed=2), _rec("LP-FT", 0.65, 0.55),
                   _rec("x", 0.9, None)], baseline="FT")
    assert grid.header == ["Task", "Method", "runs", "ID test/accuracy", "OOD cb/accuracy"]
    md = to_markdown(grid)
    assert "| RTE | FT | 2 | 65.0±7.1 | 40.0±14.1 |" in md
    assert "| RTE | LP-FT | 1 | 65.0 | 55.0 |" in md and "| x |" not in md  # runs without OOD are left out
    assert "cb = cb dev" in md
    assert grid.csv_rows[0]["ood/cb/accuracy"] == 0.4


def test_ood_rows_follow_the_studys_labels_order_and_digits():
    recs = [_rec("LP-FT", 0.65, 0.55), _rec("finetune", 0.6, 0.5), _rec("EH-FT", 0.61, 0.52)]
    grid = _table(recs, order=("finetune", "EH-FT", "LP-FT"), rename={"finetune": "FT", "LP-FT": "LP→FT"},
                  digits=2, task_labels="name")
    assert [r[:2] for r in grid.rows] == [["rte", "FT"], ["rte", "EH-FT"], ["rte", "LP→FT"]]
    assert grid.rows[0][3].render("md") == "60.00"


def test_no_ood_records_no_table():
    assert _table([_rec("FT", 0.6, None)], baseline="FT") is None
