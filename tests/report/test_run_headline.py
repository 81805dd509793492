"""A study's headline metric declared where its runs are declared: ``--run.headline`` (a run option a sweep file
sets like any other parameter; W&B's sweep schema allows no extra top-level block), recorded in each record,
and honoured by ``petune report`` without flags; runs that disagree are refused in one line naming them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from stats_records import make_record

from pl_petune.cli import main
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    return err[0]


def _cb_records(metric_claim, seeds, key_suffix=""):
    out = []
    for s in seeds:
        rec = make_record("cb", "finetune", 0.5 + s / 100, s, test_metrics={"test/f1_macro": 0.5 + s / 100,
                                                                            "test/accuracy": 0.6 + s / 100})
        rec["headline"] = {"cb": metric_claim} if metric_claim else None
        rec["run_key"] += key_suffix
        out.append(rec)
    return out


def _table2_metric(out: Path) -> set[str]:
    return {r["metric"] for r in csv.DictReader(io.StringIO((out / "table2.csv").read_text())) if r["kind"] == "task"}


def test_report_uses_the_recorded_headline_without_flags(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    Store(store).put_many(_cb_records("accuracy", (1, 2, 3)))
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--format", "md,csv"]) == 0
    assert _table2_metric(tmp_path / "r") == {"accuracy"}
    rows = [r for r in csv.DictReader(io.StringIO((tmp_path / "r" / "table2.csv").read_text())) if r["kind"] == "task"]
    assert float(rows[0]["mean"]) == pytest.approx(100 * (0.61 + 0.62 + 0.63) / 3)
    assert "cb=accuracy" in (tmp_path / "r" / "table2.md").read_text()


def test_conflicting_recorded_headlines_are_refused_naming_the_runs(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    a, b = _cb_records("accuracy", (1, 2)), _cb_records("f1_macro", (3,), "x")
    Store(store).put_many(a + b)
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--format", "md"]) == 2
    line = _one_line(capsys, "runs disagree on the headline metric of cb")
    assert b[0]["run_key"] in line and a[0]["run_key"] in line and "--headline cb=METRIC" in line
    assert not (tmp_path / "r").exists()
    # the report's own flag settles it
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--format", "csv",
                 "--headline", "cb=f1_macro"]) == 0
    assert _table2_metric(tmp_path / "r") == {"f1_macro"}


def test_runs_without_a_headline_do_not_conflict_with_declared_ones(tmp_path):
    store = tmp_path / "s.sqlite"
    Store(store).put_many(_cb_records("accuracy", (1, 2)) + _cb_records(None, (3,), "y"))
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--format", "csv"]) == 0
    assert _table2_metric(tmp_path / "r") == {"accuracy"}


@pytest.mark.parametrize("value, needle", [
    ("cb=kendall", "headline metric 'kendall' is not one of cb's: f1_macro, accuracy"),
    ("cbb=accuracy", "headline for unknown task 'cbb'"),
    ("paper", "'paper' is neither TASK=METRIC nor a preset; presets: revisiting, modulewise"),
])
def test_a_bad_run_headline_is_refused_when_parsed(value, needle, tmp_path, tiny_bert, data_dir, capsys):
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--run.headline", value, "--run.out_dir", str(tmp_path / "runs"),
            "--run.store", str(tmp_path / "s.sqlite")]
    assert main(argv) == 2
    line = _one_line(capsys, needle)
    assert "run.headline" in line and value in line and "Traceback" not in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.sqlite").exists()


def test_a_sweep_with_a_bad_headline_is_refused_before_any_run(tmp_path, tiny_bert, data_dir, in_root, capsys):
    sweep = _sweep(tmp_path, tiny_bert, data_dir, "cb=kendall")
    assert main(["sweep", str(sweep), "--store", str(tmp_path / "s.sqlite"), "--no-progress"]) == 2
    _one_line(capsys, "kendall")
    assert not (tmp_path / "runs").exists()


def _sweep(tmp_path: Path, backbone: str, data_dir: str, headline: str) -> Path:
    text = f"""name: headline_study
method: grid
metric: {{name: dev/loss, goal: minimize}}
command: ['${{env}}', '${{interpreter}}', -m, pl_petune, fit, --config, recipes/quickstart.yaml, '${{args}}']
parameters:
  run.seed: {{values: [1, 2]}}
  run.headline: {{value: '{headline}'}}
  model.init_args.backbone: {{value: {backbone}}}
  data.data_dir: {{value: {data_dir}}}
  data.train_limit: {{value: 32}}
  data.max_length: {{value: 32}}
  trainer.max_epochs: {{value: 1}}
  trainer.enable_progress_bar: {{value: false}}
  run.out_dir: {{value: {tmp_path / 'runs'}}}
"""
    path = tmp_path / "headline_study.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_sweeps_headline_reaches_the_report_end_to_end(tmp_path, tiny_bert, data_dir, in_root, capsys):
    """A sweep file sets run.headline; its runs record it; the report over its store reports CB by accuracy
    (the registry's primary metric is macro-F1) without a flag; a run declaring another headline is refused."""
    store = tmp_path / "s.sqlite"
    sweep = _sweep(tmp_path, tiny_bert, data_dir, "cb=accuracy")
    assert main(["sweep", str(sweep), "--store", str(store), "--workers", "2", "--no-progress"]) == 0
    records = Store(store).records()
    assert len(records) == 2 and all(r["headline"] == {"cb": "accuracy"} for r in records)
    assert all(json.loads((Path(r["run_dir"]) / "record.json").read_text())["headline"] == {"cb": "accuracy"}
               for r in records)
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--format", "md,csv"]) == 0
    assert _table2_metric(tmp_path / "r") == {"accuracy"}
    rows = [r for r in csv.DictReader(io.StringIO((tmp_path / "r" / "table2.csv").read_text())) if r["kind"] == "task"]
    assert float(rows[0]["mean"]) == pytest.approx(100 * sum(r["test_metrics"]["test/accuracy"] for r in records) / 2)
    capsys.readouterr()
    assert main(["fit", "--config", "recipes/quickstart.yaml", "--model.init_args.backbone", tiny_bert,
                 "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "32",
                 "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--run.seed", "3",
                 "--run.headline", "cb=f1_macro", "--run.out_dir", str(tmp_path / "runs"),
                 "--run.store", str(store)]) == 0
    capsys.readouterr()
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r2"), "--format", "md"]) == 2
    _one_line(capsys, "runs disagree on the headline metric of cb")
