"""`petune report` options a study sets (order, labels, headline metric per task) and its one-line refusals."""

from __future__ import annotations

import csv
import math

import pytest

from stats_records import make_record
from pl_petune.cli import main as cli_main
from pl_petune.stats.core import observations
from pl_petune.stats.tables import analyze, table2
from pl_petune.store import Store


def _put(store, recs):
    Store(store).put_many(recs)
    return store


@pytest.fixture
def store(tmp_path):
    recs = []
    for s in range(1, 6):
        for m, name, d in (("finetune", "FT", 0.0), ("bitfit", "BitFit", 0.01), ("lora", "LoRA", 0.02),
                           ("prefix", "PT", -0.05), ("adapter", "Adapter", 0.0)):
            recs.append(make_record("cb", m, 0.6 + d + s / 100, s, name=name))
            recs.append({**make_record("stsb", m, 0.80 + d + s / 200, s, metric="pearson", name=name),
                         "test_metrics": {"test/pearson": 0.80 + d + s / 200, "test/spearman": 0.70 + d + s / 100}})
            recs.append({**make_record("qqp", m, 0.85 + d + s / 300, s, metric="accuracy", name=name),
                         "test_metrics": {"test/accuracy": 0.85 + d + s / 300, "test/f1": 0.75 + d + s / 300}})
    return _put(tmp_path / "s.sqlite", recs)


def _table(tmp_path, store, *args):
    out = tmp_path / "r"
    assert cli_main(["report", "--store", str(store), "--out", str(out), "--format", "md,csv,tex", *args]) == 0
    md = (out / "table2.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| Task"))
    return out, md, [c.strip() for c in header.strip("|").split("|")][1:]


def test_default_column_order_is_the_papers(tmp_path, store):
    _, md, cols = _table(tmp_path, store)
    assert cols == ["FT", "Adapter", "PT", "LoRA", "BitFit"]
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and "Task" not in ln]
    assert [r for r in rows if not r.startswith(("*", "Avg"))] == ["CB", "STS-B", "QQP"]  # band, then train size


def test_order_and_rename(tmp_path, store):
    _, md, cols = _table(tmp_path, store, "--order", "LoRA,FT", "--rename", "PT=Prefix", "--rename", "FT=Full FT")
    assert cols == ["LoRA", "Full FT", "Adapter", "Prefix", "BitFit"]
    assert "Test against `Full FT`" in md


def test_tasks_ordered_by_registry_size_even_without_train_size(tmp_path):
    recs = [{k: v for k, v in make_record(t, "finetune", 0.7, s).items() if k not in ("train_size", "band")}
            for t in ("sst2", "rte", "copa", "cb", "qnli", "boolq") for s in (1, 2)]
    a = analyze(observations(recs))
    assert a.tasks == ["cb", "copa", "rte", "boolq", "sst2", "qnli"]
    assert [r[0] for r in table2(a).rows if r[0].endswith("-Resource")] == ["Low-Resource", "Medium-Resource",
                                                                           "High-Resource"]


def test_headline_metric_per_task(tmp_path, store):
    out, md, _ = _table(tmp_path, store, "--headline", "stsb=spearman", "--headline", "qqp=f1")
    rows = list(csv.DictReader((out / "table2.csv").open()))
    stsb = next(r for r in rows if r["task"] == "stsb" and r["column"] == "FT")
    qqp = next(r for r in rows if r["task"] == "qqp" and r["column"] == "FT")
    assert stsb["metric"] == "spearman" and float(stsb["mean"]) == pytest.approx(100 * (0.70 + 0.03))
    assert qqp["metric"] == "f1" and float(qqp["mean"]) == pytest.approx(100 * (0.75 + 0.01))
    assert "STS-B Spearman corr." in md and "QQP F1" in md and "stsb=spearman" in md
    out2, md2, _ = _table(tmp_path, store, "--headline", "modulewise")
    assert "STS-B Spearman corr." in md2 and "QQP F1" in md2
    _, md3, _ = _table(tmp_path, store)
    assert "STS-B Pearson corr." in md3 and "QQP accuracy" in md3


def test_a_record_without_the_headline_metric_is_named(tmp_path, store, capsys):
    Store(store).put(make_record("stsb", "finetune", 0.8, 99, metric="pearson", name="FT"))
    assert cli_main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--headline", "stsb=spearman"]) == 2
    err = capsys.readouterr().err
    assert "has no test/spearman, the study's headline metric for stsb; it has: test/pearson" in err
    assert err.count("\n") == 1


def test_nan_score_and_seed_are_noted_not_blank(tmp_path):
    recs = [make_record("cb", m, 0.6 + s / 100, s) for m in ("finetune", "lora") for s in range(1, 6)]
    recs[7] = {**recs[7], "test_metrics": {"test/f1_macro": math.nan}}
    recs.append({**make_record("cb", "lora", 0.9, 77), "init_seed": math.nan, "run_key": "nanseed"})
    a = analyze(observations(recs))
    g = table2(a)
    cell = next(r for r in g.rows if r[0] == "CB")[2]
    assert not isinstance(cell, str) and math.isfinite(cell.mean)
    notes = " ".join(g.notes)
    assert "CB / lora: 1 run(s) with a NaN score left out (run " + recs[7]["run_key"] in notes
    assert "CB / lora: 1 run(s) with no usable seed left out (run nanseed)" in notes
    assert "CB / lora = 4" in notes


@pytest.mark.parametrize("args,needle", [
    (["--digits", "-1"], "--digits '-1' must be a whole number from 0 to 6"),
    (["--digits", "x"], "--digits 'x' must be a whole number from 0 to 6"),
    (["--digits", "9"], "--digits '9' must be a whole number from 0 to 6"),
    (["--format", ","], "--format ',' names no format; choose from: md, csv"),
    (["--format", ""], "--format '' names no format"),
    (["--group-by", "hparams.lora_rr"], "--group-by 'hparams.lora_rr': no run has this field; fields:"),
    (["--order", "FT,Lora"], "--order: no column 'Lora'; the columns are: Adapter, BitFit, FT, LoRA, PT"),
    (["--rename", "FT"], "--rename 'FT' is not NAME=VALUE"),
    (["--rename", "XX=Y"], "--rename: no column 'XX'"),
    (["--headline", "stsb=kendall"], "--headline stsb=kendall: headline metric 'kendall' is not one of stsb's: pearson, spearman"),
    (["--headline", "stbs=pearson"], "headline for unknown task 'stbs'"),
    (["--headline", "paper"], "--headline 'paper' is neither TASK=METRIC nor a preset; presets: revisiting, modulewise"),
    (["--task-labels", "upper"], "unknown --task-labels 'upper'; choose from: paper, name"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, store, capsys, args, needle):
    out = tmp_path / "r"
    assert cli_main(["report", "--store", str(store), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), "a refused report writes nothing"


def test_out_an_existing_file(tmp_path, store, capsys):
    target = tmp_path / "report.md"
    target.write_text("keep me")
    assert cli_main(["report", "--store", str(store), "--out", str(target)]) == 2
    assert "--out '" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert cli_main(["report", "--store", str(store), "--out", str(target / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_group_by_a_field_some_runs_have(tmp_path, capsys):
    recs = [make_record("cb", "lora", 0.6 + s / 100, s, hparams={"lora_r": r}) for r in (8, 16) for s in range(1, 4)]
    recs += [make_record("cb", "finetune", 0.6, s) for s in range(1, 4)]
    store = _put(tmp_path / "s.sqlite", recs)
    assert cli_main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--format", "md",
                     "--group-by", "hparams.lora_r"]) == 0
    md = (tmp_path / "r" / "table2.md").read_text()
    assert "lora (lora_r=8)" in md and "lora (lora_r=16)" in md


def test_a_percent_score_already_in_a_store_is_refused_not_printed(tmp_path, capsys):
    import json
    import sqlite3

    store = _put(tmp_path / "s.sqlite", [make_record("cb", "finetune", 0.7, s) for s in (1, 2)])
    db = sqlite3.connect(store)  # a record filed by an older pl_petune, before put checked ranges
    (key, blob), = db.execute("SELECT run_key, record FROM runs LIMIT 1").fetchall()
    rec = json.loads(blob)
    rec["test_metrics"]["test/f1_macro"] = 70.0
    db.execute("UPDATE runs SET record=? WHERE run_key=?", (json.dumps(rec), key))
    db.commit()
    db.close()
    assert cli_main(["report", "--store", str(store), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"run '{key}' (cb) test/f1_macro = 70 is outside f1_macro's range [0, 1]" in err and err.count("\n") == 1
