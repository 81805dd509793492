"""Run folders are the truth: `petune index` rebuilds a store from them; `petune runs --runs` and `petune report
--runs` read them directly; `petune runs` shows the protocol of every run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pl_petune.cli import main
from pl_petune.records import write_json
from pl_petune.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stats"))
from stats_records import make_record, study  # noqa: E402


def _tree(root: Path, records: list[dict]) -> Path:
    for rec in records:
        write_json(root / rec["task"] / rec["method"] / rec["run_key"] / "record.json", rec)
    return root


@pytest.fixture
def records():
    recs = study(tasks=("cb", "rte"), methods=("finetune", "lora"), seeds=range(1, 4))
    return [{**r, "created_at": f"2026-01-0{1 + i % 9}T00:00:00+00:00"} for i, r in enumerate(recs)]


def test_index_rebuilds_a_store_from_run_folders_once_per_run(tmp_path, records, capsys):
    tree = _tree(tmp_path / "runs", records)
    failed = {**make_record("cb", "lora", 0.1, 9), "status": "failed"}
    write_json(tree / "cb" / "lora" / failed["run_key"] / "record.json", failed)
    (tree / "cb" / "junk").mkdir()
    (tree / "cb" / "junk" / "record.json").write_text("{torn")
    store = tmp_path / "index.sqlite"
    assert main(["index", str(tree), "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert "1 record.json file(s)" in err and f"{len(records) + 1} added" in err
    assert sorted(r["run_key"] for r in Store(store).records()) == sorted(r["run_key"] for r in records)
    assert Store(store).status(failed["run_key"]) == "failed"
    assert main(["index", str(tree), "--store", str(store)]) == 0  # again: nothing changes
    assert f"0 added, 0 updated, {len(records)} unchanged, 1 incomplete" in capsys.readouterr().err
    # a newer complete record in a folder replaces the row; an incomplete one never replaces a complete row
    newer = {**records[0], "created_at": "2026-02-01T00:00:00+00:00", "test_metrics": {"test/f1_macro": 0.99}}
    write_json(tree / newer["task"] / newer["method"] / newer["run_key"] / "record.json", newer)
    assert main(["index", str(tree), "--store", str(store)]) == 0
    assert Store(store).get(newer["run_key"])["test_metrics"] == {"test/f1_macro": 0.99}


def test_index_refuses_a_missing_folder_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "out" / "index.sqlite"
    assert main(["index", str(tmp_path / "nope"), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a folder" in err and not store.parent.exists()


def test_runs_reads_run_folders_directly_with_the_protocol_column(tmp_path, records, capsys):
    tree = _tree(tmp_path / "runs", records + [make_record("rte", "lora", 0.7, 7, protocol="petuning")])
    assert main(["runs", "--runs", str(tree)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:8] == ["run_key", "status", "attempts", "sweep", "index", "task", "method", "protocol"]
    assert out.count(" train_split ") == len(records) and out.count(" petuning ") == 1
    assert f"{len(records) + 1} run(s): {len(records) + 1} complete" in out
    assert not list(tmp_path.glob("**/*.sqlite"))  # read only
    assert main(["runs", "--runs", str(tree), "--format", "json", "--status", "complete"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["protocol"] for r in rows} == {"train_split", "petuning"}


def test_runs_from_a_store_shows_the_protocol_column(tmp_path, records, capsys):
    store = tmp_path / "s.sqlite"
    for rec in records[:2]:
        Store(store).put(rec)
    assert main(["runs", "--store", str(store), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "protocol" in lines[0].split(",") and all(",train_split," in ln for ln in lines[1:])


@pytest.mark.parametrize("args, needle", [
    (["--runs", "NOPE"], "is not a folder"),
    (["--runs", ".", "--store", "x.sqlite"], "--runs reads run folders; it does not combine with --store"),
    (["--status", "done"], "--status 'done' unknown; allowed: pending, running, complete, failed, interrupted, stale, queued"),
    (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
])
def test_runs_bad_input_is_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.sqlite").touch()
    assert main(["runs", "--store", "s.sqlite", *args] if "--store" not in args and "--runs" not in args
                else ["runs", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_report_reads_run_folders_like_a_store(tmp_path, records, capsys):
    tree = _tree(tmp_path / "runs", records)
    store = tmp_path / "s.sqlite"
    for rec in records:
        Store(store).put(rec)
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "a"), "--format", "md"]) == 0
    assert main(["report", "--runs", str(tree), "--out", str(tmp_path / "b"), "--format", "md"]) == 0
    capsys.readouterr()
    assert (tmp_path / "a" / "table2.md").read_text() == (tmp_path / "b" / "table2.md").read_text()
    assert main(["report", "--runs", str(tmp_path / "empty_or_missing"), "--out", str(tmp_path / "c")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_index_names_and_skips_a_record_that_does_not_validate(tmp_path, records, capsys):
    tree = _tree(tmp_path / "runs", records[:2])
    bad = {"schema": 1, "run_key": "00000000000000ff", "status": "complete", "task": "cb"}  # lacks the results
    write_json(tree / "cb" / "x" / bad["run_key"] / "record.json", bad)
    assert main(["index", str(tree), "--store", str(tmp_path / "s.sqlite")]) == 0
    err = capsys.readouterr().err
    assert "00000000000000ff: record not indexed (complete record '00000000000000ff' lacks" in err
    assert "2 added" in err and ", 1 invalid" in err
    assert len(Store(tmp_path / "s.sqlite").records()) == 2


def test_index_store_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "runs").mkdir()
    assert main(["index", str(tmp_path / "runs"), "--store", str(tmp_path / "afile" / "s.sqlite")]) == 2
    assert "afile' is a file, not a folder" in capsys.readouterr().err
