"""Beyond one machine: children die with the runner, heartbeats, stale claims released in minutes, shards,
two "nodes" (runners with different host names and stores) sharing one folder tree, run folders as the truth."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from pl_petune.store import Store
from pl_petune.sweep import PlannedRun, Runner, shard

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for `petune fit`: logs its launch, sleeps, then writes its complete record into its run folder
# (atomically, as petune fit does) and into the store it was given (--run.store=...).
FAKE_FIT = r"""
import json, os, sys, time
from pathlib import Path
from pl_petune.records import write_json
from pl_petune.store import Store
key, run_dir = os.environ["PETUNE_SWEEP_RUN_KEY"], Path(sys.argv[1])
with open(os.environ["FAKE_LAUNCHES"], "a") as fh:
    fh.write(f"{key} {os.environ.get('PETUNE_HOST', '-')} {os.getpid()}\n")
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
rec = {"schema": 1, "run_key": key, "status": "complete", "task": "cb", "method": "fake",
       "protocol": "train_split", "init_seed": 1, "data_seed": 1, "primary_metric": "f1_macro",
       "higher_is_better": True, "test_metrics": {"test/f1_macro": 0.5}, "created_at": str(time.time()),
       "run_dir": str(run_dir)}
write_json(run_dir / "record.json", rec)
Store(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--run.store="))).put(rec)
"""

# One runner process (a "node"): the runs from a JSON file, its own store.
RUNNER = r"""
import json, sys
from pl_petune.sweep import PlannedRun, Runner
runs = [PlannedRun(**r) for r in json.load(open(sys.argv[1]))]
out = Runner(runs, sys.argv[2], "nodes", workers=int(sys.argv[3]), progress=False).run()
print(json.dumps({"complete": out.complete, "skipped": out.skipped}))
"""


def folder_runs(tree: Path, n: int) -> list[PlannedRun]:
    return [PlannedRun(i, {"i": i}, [sys.executable, "-c", FAKE_FIT, str(tree / f"{i:016x}")], key=f"{i:016x}",
                       task="cb", method="fake", run_dir=str(tree / f"{i:016x}")) for i in range(n)]


@pytest.fixture
def launches(tmp_path, monkeypatch):
    path = tmp_path / "launches.txt"
    monkeypatch.setenv("FAKE_LAUNCHES", str(path))
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    return path


def _launched(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent (here: init) has not reaped it yet


def _start_runner(tmp_path: Path, runs: list[PlannedRun], store: Path, host: str, workers: int = 1,
                  **env: str) -> subprocess.Popen:
    spec = tmp_path / f"runs-{host}.json"
    spec.write_text(json.dumps([r.__dict__ for r in runs]))
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(spec), str(store), str(workers)],
                            env={**os.environ, "PETUNE_HOST": host, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_minus_9_of_the_runner_kills_its_training_child(tmp_path, launches):
    runs = folder_runs(tmp_path / "tree", 1)
    runner = _start_runner(tmp_path, runs, tmp_path / "s.sqlite", "node", FAKE_SLEEP="120")
    deadline = time.time() + 60
    while not _launched(launches) and time.time() < deadline:
        time.sleep(0.1)
    (key, _, pid), = _launched(launches)
    assert _alive(int(pid))
    os.kill(runner.pid, signal.SIGKILL)  # the runner only, not its process group
    runner.wait()
    deadline = time.time() + 10
    while _alive(int(pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid)), "the petune fit child outlived its runner: a rerun would train it twice"
    # The rerun takes over the dead runner's claims and trains the run once, to completion.
    os.environ["FAKE_SLEEP"] = "0"
    try:
        second = _start_runner(tmp_path, runs, tmp_path / "s.sqlite", "node")
        out, err = second.communicate(timeout=120)
    finally:
        os.environ.pop("FAKE_SLEEP", None)
    assert second.returncode == 0, err
    assert json.loads(out)["complete"] == [key] and len(_launched(launches)) == 2


def test_the_runner_beats_while_a_run_trains(tmp_path, launches, monkeypatch):
    monkeypatch.setenv("PETUNE_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("FAKE_SLEEP", "2")
    store = tmp_path / "s.sqlite"
    run, = folder_runs(tmp_path / "tree", 1)
    runner = Runner([run], store, "beat", progress=False)
    t = threading.Thread(target=runner.run)
    t.start()
    beats, mtimes = [], []
    deadline = time.time() + 30
    while t.is_alive() and time.time() < deadline and len(beats) < 8:
        with closing(sqlite3.connect(store, timeout=5)) as db:
            row = db.execute("SELECT heartbeat FROM runs WHERE run_key=? AND status='running'", (run.key,)).fetchone()
        claim = Path(run.run_dir) / ".sweep-claim"
        if row and claim.exists():
            beats.append(row[0])
            mtimes.append(claim.stat().st_mtime)
        time.sleep(0.2)
    t.join(60)
    assert len(set(beats)) >= 3, beats  # the claim row was renewed while the child ran
    assert len(set(mtimes)) >= 3, mtimes  # and so was the run folder's claim
    assert runner.outcome.complete == [run.key]
    assert not (Path(run.run_dir) / ".sweep-claim").exists()  # given back at the end


def _age_store_claim(store: Path, key: str, age: float) -> None:
    with closing(sqlite3.connect(store, timeout=5)) as db:
        db.execute("UPDATE runs SET heartbeat=? WHERE run_key=?", (time.time() - age, key))
        db.commit()


def test_a_claim_of_another_host_is_released_after_minutes_without_a_beat(tmp_path, launches):
    store = tmp_path / "s.sqlite"
    fresh, stale = folder_runs(tmp_path / "tree", 2)
    for run in (fresh, stale):
        assert Store(store).claim(run.key, owner="othernode:4242")
    _age_store_claim(store, fresh.key, 60)  # beat a minute ago: alive
    _age_store_claim(store, stale.key, 301)  # five minutes of silence: dead (the old rule waited 6 hours)
    out = Runner([fresh, stale], store, "stale", progress=False).run()
    assert out.complete == [stale.key] and out.skipped == {fresh.key: "running elsewhere"}


def test_a_run_folder_claim_of_a_silent_node_is_taken_over_and_a_live_one_respected(tmp_path, launches):
    fresh, stale = folder_runs(tmp_path / "tree", 2)
    for run, age in ((fresh, 10), (stale, 400)):
        claim = Path(run.run_dir) / ".sweep-claim"
        claim.parent.mkdir(parents=True)
        claim.write_text(json.dumps({"owner": "othernode:7", "since": time.time() - age}))
        os.utime(claim, (time.time() - age, time.time() - age))
    out = Runner([fresh, stale], tmp_path / "s.sqlite", "claims", progress=False).run()
    assert out.complete == [stale.key]
    assert out.skipped == {fresh.key: "running elsewhere (othernode:7)"}
    assert Store(tmp_path / "s.sqlite").status(fresh.key) == "pending"  # the local claim was given back


def test_a_run_complete_in_its_folder_is_indexed_and_not_retrained(tmp_path, launches):
    done, todo = folder_runs(tmp_path / "tree", 2)
    subprocess.run(done.command + ["--run.store=" + str(tmp_path / "other.sqlite")], check=True,
                   env={**os.environ, "PETUNE_SWEEP_RUN_KEY": done.key})  # "another node" ran it
    assert len(_launched(launches)) == 1
    out = Runner([done, todo], tmp_path / "mine.sqlite", "idx", progress=False).run()
    assert out.skipped == {done.key: "complete"} and out.complete == [todo.key]
    assert [k for k, *_ in _launched(launches)] == [done.key, todo.key]
    assert Store(tmp_path / "mine.sqlite").get(done.key)["status"] == "complete"  # indexed here


def test_two_nodes_on_one_folder_tree_complete_every_run_exactly_once(tmp_path, launches):
    tree = tmp_path / "shared" / "runs"
    runs = folder_runs(tree, 12)
    env = {"FAKE_SLEEP": "0.3"}
    nodes = [_start_runner(tmp_path, runs, tmp_path / f"{h}.sqlite", h, workers=2, **env) for h in ("nodeA", "nodeB")]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in nodes]
    assert all(p.returncode == 0 for p in nodes)
    keys = [k for k, *_ in _launched(launches)]
    assert sorted(keys) == sorted(r.key for r in runs)  # every run launched once over both nodes
    assert {h for _, h, _ in _launched(launches)} == {"nodeA", "nodeB"}  # both nodes did work
    assert sum(len(o["complete"]) for o in outs) == 12
    for r in runs:
        assert json.loads((Path(r.run_dir) / "record.json").read_text())["status"] == "complete"
    # A third node finds nothing to do, and one index rebuilt from the folders holds all twelve once.
    third = _start_runner(tmp_path, runs, tmp_path / "nodeC.sqlite", "nodeC")
    assert json.loads(third.communicate(timeout=120)[0])["complete"] == [] and len(_launched(launches)) == 12
    from pl_petune.cli import main

    assert main(["index", str(tree), "--store", str(tmp_path / "merged.sqlite")]) == 0
    assert sorted(r["run_key"] for r in Store(tmp_path / "merged.sqlite").records()) == sorted(r.key for r in runs)


def test_shards_split_a_sweep_deterministically_and_cover_it_once():
    runs = [PlannedRun(i, {"i": i}, [], key=f"{(i * 7919) % 65536:016x}") for i in range(11)]
    parts = [shard(runs, i, 3) for i in range(3)]
    assert sorted(r.key for p in parts for r in p) == sorted(r.key for r in runs)  # every run once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    shuffled = list(reversed(runs))
    assert [{r.key for r in shard(shuffled, i, 3)} for i in range(3)] == [{r.key for r in p} for p in parts]


def test_petune_sweep_shard_on_a_real_sweep_file(in_root, capsys, tmp_path):
    from pl_petune.cli import main

    keys = []
    for i in range(2):
        assert main(["sweep", "sweeps/smoke.yaml", "--check", "--shard", f"{i}/2",
                     "--store", str(tmp_path / "s.sqlite")]) == 0
        out = capsys.readouterr()
        assert f"2 runs in shard {i}/2" in out.err
        keys.append({line.split()[1] for line in out.out.splitlines()})
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 4


def test_petune_fit_does_not_retrain_a_run_whose_folder_record_is_complete(tmp_path, tiny_bert, data_dir, in_root,
                                                                            fit_parser):
    """Another node's store never saw it; its run folder says complete: `petune fit` exits 0 untrained."""

    from pl_petune.sweep import plan

    sweep = {"method": "grid", "command": ["${env}", "${interpreter}", "-m", "pl_petune", "fit", "--config",
                                           "recipes/quickstart.yaml", "${args}"],
             "parameters": {"model.init_args.backbone": {"value": tiny_bert}, "data.data_dir": {"value": data_dir},
                            "data.task": {"value": "cb"}, "run.out_dir": {"value": str(tmp_path / "runs")}}}
    run, = plan(sweep, parser=fit_parser)
    record = {"schema": 1, "run_key": run.key, "status": "complete", "task": "cb", "method": run.method,
              "protocol": "train_split", "primary_metric": "f1_macro", "test_metrics": {"test/f1_macro": 0.25},
              "best_epoch": 1, "epochs": 2, "wall_time_s": 3.0, "created_at": "2026-01-01T00:00:00+00:00"}
    Path(run.run_dir).mkdir(parents=True)
    (Path(run.run_dir) / "record.json").write_text(json.dumps(record))
    res = subprocess.run(run.command + [f"--run.store={tmp_path / 'node_b.sqlite'}"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"run {run.key} is already complete in {run.run_dir}/record.json" in res.stderr
    assert not (Path(run.run_dir) / "checkpoints").exists()  # nothing trained
    assert json.loads((Path(run.run_dir) / "record.json").read_text()) == record



def test_a_node_that_dies_loses_its_claims_once_it_stops_beating(tmp_path, launches):
    """nodeA is killed mid-run (its child dies with it); nodeB respects the claim while it is fresh, then takes
    the run over once nodeA has been silent for the stale time, and trains it once."""
    tree = tmp_path / "shared"
    runs = folder_runs(tree, 1)
    fast = {"PETUNE_HEARTBEAT_S": "0.3", "PETUNE_STALE_AFTER_S": "4"}
    node_a = _start_runner(tmp_path, runs, tmp_path / "a.sqlite", "nodeA", FAKE_SLEEP="120", **fast)
    deadline = time.time() + 60
    while not _launched(launches) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(node_a.pid, signal.SIGKILL)
    node_a.wait()
    killed_at = time.time()
    early = _start_runner(tmp_path, runs, tmp_path / "b.sqlite", "nodeB", FAKE_SLEEP="0", **fast)
    out = json.loads(early.communicate(timeout=120)[0])
    if time.time() - killed_at < 4:  # still within nodeA's last beat + stale time: its claim holds
        assert out["skipped"] == {runs[0].key: "running elsewhere (nodeA:%d)" % node_a.pid}
    time.sleep(max(0.0, killed_at + 4.5 - time.time()))
    late = _start_runner(tmp_path, runs, tmp_path / "b.sqlite", "nodeB", FAKE_SLEEP="0", **fast)
    out = json.loads(late.communicate(timeout=120)[0])
    assert out["complete"] == [runs[0].key]
    assert [h for _, h, _ in _launched(launches)] == ["nodeA", "nodeB"]
