"""``petune runs`` shows each run's protocol: from its record, and before any record exists (a claimed or
queued run of a sweep) from the parsed config the sweep planned, also when the sweep does not set it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml
from stats_records import make_record

from pl_petune.cli import main as cli_main
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_runs_table_and_csv_show_the_recorded_protocol(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    Store(store).put_many([make_record("cb", "finetune", 0.6, 1, protocol="train_split"),
                           make_record("cb", "finetune", 0.7, 1, protocol="petuning")])
    assert cli_main(["runs", "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "protocol" in lines[0].split()
    assert sorted(ln.split()[lines[0].split().index("protocol")] for ln in lines[1:3]) == ["petuning", "train_split"]
    assert cli_main(["runs", "--store", str(store), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["protocol"] for r in rows) == ["petuning", "train_split"]


def test_a_claimed_run_without_a_record_shows_the_planned_protocol(tmp_path, monkeypatch, capsys, fit_parser):
    from pl_petune.sweep.plan import plan

    monkeypatch.chdir(ROOT)
    sweep = yaml.safe_load((ROOT / "sweeps" / "cpu_repro.yaml").read_text())
    sweep["parameters"] = {"run.seed": {"value": 1111}, "data": {"value": {"task": "cb"}},
                           "config": {"value": sweep["parameters"]["config"]["values"][0]}}
    (run,) = plan(sweep, parser=fit_parser)
    assert "data.protocol" not in json.dumps(run.config)  # the recipe sets it, not the sweep
    store = tmp_path / "s.sqlite"
    Store(store).claim(run.key, spec=run.spec("cpu_repro"))
    assert cli_main(["runs", "--store", str(store), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["protocol"] == "train_split"


def test_a_reader_that_goes_away_stops_the_tool_quietly():
    """``petune recipes list | head -1``: the closed pipe ends the tool with SIGPIPE's status, not a traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pl_petune", "recipes", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the tool writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
