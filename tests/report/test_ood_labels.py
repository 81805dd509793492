"""``petune report`` over a store with OOD runs: the OOD table uses Table 2's labels and column order, as the
other tables and figures do."""

from __future__ import annotations

import csv
import io

from pl_petune.report import main
from pl_petune.store import Store
from stats_records import make_record


def _ood(rec: dict, score: float) -> dict:
    return {**rec, "ood_metrics": {"ood/cb/accuracy": score}, "ood_sets": {"cb": {"task": "cb", "split": "dev"}}}


def _store(tmp_path):
    recs = []
    for name, base in (("LP-FT", 0.62), ("FT", 0.58), ("EH-FT(LoRA)", 0.6)):
        for seed in (1, 2, 3):
            rec = make_record("rte", "finetune", base + seed / 100, seed, name=name,
                              hparams={"run.name": name})
            recs.append(_ood(rec, base - 0.1))
    Store(tmp_path / "s.sqlite").put_many(recs)
    return tmp_path / "s.sqlite"


def _header(md: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith("| "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_ood_table_matches_table2_labels_and_order(tmp_path):
    store = _store(tmp_path)
    out = tmp_path / "rep"
    assert main(["--store", str(store), "--out", str(out), "--format", "md,csv", "--baseline", "FT",
                 "--order", "FT,EH-FT(LoRA),LP-FT", "--rename", "LP-FT=LP→FT"]) == 0
    t2 = _header((out / "table2.md").read_text())[1:]
    ood_md = (out / "ood.md").read_text()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in ood_md.splitlines()[4:] if ln.startswith("| ")]
    assert [r[1] for r in rows] == t2 == ["FT", "EH-FT(LoRA)", "LP→FT"]
    assert {r[0] for r in rows} == {"RTE"}  # the paper's task label, as table2's rows
    table = list(csv.DictReader(io.StringIO((out / "ood.csv").read_text())))
    assert [r["column"] for r in table] == t2 and {r["row"] for r in table} == {"RTE"}
