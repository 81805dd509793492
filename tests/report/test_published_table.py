"""Issue 18's "done when": importing per-seed scores of a published table and running the report reproduces it,
with its rows, columns and labels (Revisiting PETuning, Table 2; see published_table2.py for the data)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

import published_table2 as pub
from pl_petune.cli import main as cli_main

CELL = re.compile(r"^(-?\d+\.\d+)(?:±(\d+\.\d+))?([↑↓]?)(†?)$")


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    scores = pub.write_csv(root / "table2_per_seed.csv")
    store = root / "s.sqlite"
    assert cli_main(["import", str(scores), "--unit", "percent", "--protocol", "petuning", "--store", str(store)]) == 0
    assert cli_main(["report", "--store", str(store), "--out", str(root / "rep"), "--digits", "2",
                     "--format", "md,csv,tex"]) == 0
    return root / "rep"


def _md_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    return split[0], split[1:]


def test_rows_columns_and_labels_as_published(reported):
    header, rows = _md_rows(reported / "table2.md")
    assert header[1:] == list(pub.COLUMNS)
    assert [r[0].strip("*") for r in rows] == list(pub.ROWS)


def test_every_cell_reproduced_to_the_published_digits(reported):
    _, rows = _md_rows(reported / "table2.md")
    checked = 0
    for row in rows:
        label = row[0].strip("*")
        if label.endswith("-Resource"):
            continue
        for col, text in zip(pub.COLUMNS, row[1:]):
            m = CELL.match(text)
            assert m, f"{label} / {col}: {text!r}"
            if label == "Avg. (All)":
                assert m.group(2) is None and float(m.group(1)) == pub.AVG_ALL[col], (label, col, text)
            else:
                mean, std, arrow = pub.PUBLISHED[label][pub.COLUMNS.index(col)]
                assert (m.group(1), m.group(2)) == (f"{mean:.2f}", f"{std:.2f}"), (label, col, text)
                if arrow and not label.startswith("Avg."):
                    assert m.group(3) == arrow, f"{label} / {col}: the paper shows {arrow}, we print {text}"
            checked += 1
    assert checked == len(pub.COLUMNS) * (len(pub.ROWS) - 3)


def test_csv_and_latex_agree_and_name_test_n_and_spread(reported):
    rows = list(csv.DictReader((reported / "table2.csv").open()))
    cb_ft = next(r for r in rows if r["row"] == "CB" and r["column"] == "FT")
    assert float(cb_ft["mean"]) == pytest.approx(70.0) and float(cb_ft["std"]) == pytest.approx(13.32)
    assert cb_ft["n"] == "20" and cb_ft["metric"] == "f1_macro"
    md = (reported / "table2.md").read_text()
    assert "Welch" in md and "n per cell: 20 runs (seeds) in every cell" in md
    assert "std over seeds of the per-seed band average" in md
    tex = (reported / "table2.tex").read_text()
    assert "`" not in tex and r"70.00$_{\pm 13.32}$" in tex and r"\textit{Low-Resource}" in tex
    assert "STS-B Pearson corr." in md and "CB macro-F1" in md


def test_docs_copy_of_the_per_seed_file_is_current(tmp_path):
    committed = Path(__file__).resolve().parents[2] / "docs" / "results" / "revisiting_table2" / "table2_per_seed.csv"
    assert committed.read_text() == pub.write_csv(tmp_path / "x.csv").read_text()


def test_independent_task_formula_matches_one_published_band_spread_of_fifteen():
    import numpy as np

    hits = [(band, col) for band, tasks in pub.BANDS.items() for j, col in enumerate(pub.COLUMNS)
            if round(float(np.sqrt(sum(pub.PUBLISHED[t][j][1] ** 2 for t in tasks)) / len(tasks)), 2)
            == pub.PUBLISHED[f"Avg. ({band})"][j][1]]
    assert hits == [("Low", "FT")]  # what docs/reports.md says
