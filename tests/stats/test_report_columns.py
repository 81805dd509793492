"""Columns follow the recipe's run name, so FT and LP-FT (both FullFinetune) stay apart."""

from __future__ import annotations

from stats_records import make_record
from pl_petune.cli import main as cli_main
from pl_petune.store import Store


def test_two_stage_runs_get_their_own_column(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    for seed in range(1, 6):
        store.put(make_record("rte", "finetune", 0.60 + seed / 100, seed, name="FT"))
        store.put({**make_record("rte", "finetune", 0.70 + seed / 100, seed, hparams={"cb": "lpft"}),
                   "name": "LP-FT"})
    assert cli_main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r"),
                     "--format", "md"]) == 0
    table = (tmp_path / "r" / "table2.md").read_text()
    assert "LP-FT" in table and "FT" in table
    header = next(line for line in table.splitlines() if "LP-FT" in line)
    assert header.count("|") >= 4  # task column plus two method columns
    capsys.readouterr()
    assert cli_main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r2"),
                     "--format", "md", "--columns", "method"]) == 0
    assert "LP-FT" not in (tmp_path / "r2" / "table2.md").read_text()
