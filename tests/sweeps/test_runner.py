"""The offline runner: exactly once, retries, stale claims, devices; and the real kill-and-rerun test."""

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
from pl_petune.sweep import PlannedRun, Runner, runs_main

# A stand-in for `petune fit`: writes a complete record for its run key (fails when told to), in ~0.1 s.
FAKE_FIT = r"""
import json, os, sys
from pl_petune.store import Store
key = os.environ["PETUNE_SWEEP_RUN_KEY"]
log = os.environ["FAKE_LAUNCHES"]
with open(log, "a") as fh:
    fh.write(key + "\n")
if key in os.environ.get("FAKE_FAIL", "").split(","):
    sys.exit(3)
if key in os.environ.get("FAKE_INTERRUPT", "").split(","):  # as RunRecorder does on SIGTERM: exit 128 + 15
    Store(os.environ["PETUNE_STORE"]).put({"schema": 1, "run_key": key, "status": "interrupted", "task": "cb",
                                           "method": "fake", "init_seed": 1, "data_seed": 1})
    sys.exit(143)
Store(os.environ["PETUNE_STORE"]).put({
    "schema": 1, "run_key": key, "status": "complete", "task": "cb", "method": "fake", "protocol": "train_split",
    "init_seed": 1, "data_seed": 1, "primary_metric": "f1_macro", "higher_is_better": True,
    "test_metrics": {"test/f1_macro": 0.5}, "extra": {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}})
"""


def fake_runs(n: int) -> list[PlannedRun]:
    return [PlannedRun(i, {"i": i}, [sys.executable, "-c", FAKE_FIT], key=f"{i:016x}", task="cb", method="fake")
            for i in range(n)]


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    launches = tmp_path / "launches.txt"
    monkeypatch.setenv("FAKE_LAUNCHES", str(launches))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_INTERRUPT", raising=False)
    return launches


def launched(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_two_runners_racing_on_one_store_run_each_run_once(tmp_path, fake_env):
    store = tmp_path / "s.sqlite"
    runs = fake_runs(12)
    runners = [Runner(runs, store, "race", workers=3, progress=False) for _ in range(2)]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = launched(fake_env)
    assert sorted(keys) == sorted(r.key for r in runs)  # every run launched exactly once
    assert len(Store(store).records()) == 12
    assert sum(len(r.outcome.complete) for r in runners) == 12


def test_devices_pin_one_device_per_worker(tmp_path, fake_env):
    store = tmp_path / "s.sqlite"
    Runner(fake_runs(6), store, "dev", workers=2, devices=["0", "1"], progress=False).run()
    recs = Store(store).records()
    rows = {r["run_key"]: json.loads(r["spec"]) for r in Store(store).rows()}
    assert len(recs) == 6
    for rec in recs:
        assert rec["extra"]["cuda"] == rows[rec["run_key"]]["device"]  # the child saw its worker's device
    assert {r["extra"]["cuda"] for r in recs} == {"0", "1"}


def test_complete_runs_are_skipped_and_failed_ones_retried_up_to_the_limit(tmp_path, fake_env, monkeypatch):
    store = tmp_path / "s.sqlite"
    runs = fake_runs(3)
    monkeypatch.setenv("FAKE_FAIL", runs[1].key)
    out = Runner(runs, store, "retry", workers=1, retries=1, progress=False).run()
    assert out.failed == [runs[1].key] and len(out.complete) == 2
    row = next(r for r in Store(store).rows() if r["run_key"] == runs[1].key)
    assert row["status"] == "failed" and "exit code 3" in row["error"]
    # Second invocation: complete runs are not relaunched, the failed one is retried (attempt 2 of 2).
    out = Runner(runs, store, "retry", workers=1, retries=1, progress=False).run()
    assert launched(fake_env) == [runs[0].key, runs[1].key, runs[2].key, runs[1].key]
    assert out.skipped == {runs[0].key: "complete", runs[2].key: "complete"}
    # Third: out of attempts, so it is not launched again; fixed, and with one more retry, it completes.
    out = Runner(runs, store, "retry", workers=1, retries=1, progress=False).run()
    assert "raise --retries" in out.skipped[runs[1].key] and len(launched(fake_env)) == 4
    monkeypatch.delenv("FAKE_FAIL")
    out = Runner(runs, store, "retry", workers=1, retries=2, progress=False).run()
    assert out.complete == [runs[1].key] and len(Store(store).records()) == 3


def test_an_interrupted_run_spends_no_attempt_and_resumes_on_the_next_sweep(tmp_path, fake_env, monkeypatch):
    """A run stopped by SIGTERM (a preempted node) is resumable: not failed, no retry used up."""
    store = tmp_path / "s.sqlite"
    runs = fake_runs(2)
    monkeypatch.setenv("FAKE_INTERRUPT", runs[0].key)
    out = Runner(runs, store, "pre", workers=1, retries=0, progress=False).run()
    assert out.failed == [] and out.skipped.get(runs[0].key) == "interrupted"
    row = next(r for r in Store(store).rows() if r["run_key"] == runs[0].key)
    assert row["status"] == "pending" and row["attempts"] == 0
    monkeypatch.delenv("FAKE_INTERRUPT")
    out = Runner(runs, store, "pre", workers=1, retries=0, progress=False).run()  # no retries, still it runs
    assert out.complete == [runs[0].key] and len(Store(store).records()) == 2


def test_a_run_that_cannot_be_started_stops_the_sweep_without_spending_attempts(tmp_path, fake_env, monkeypatch):
    """A machine fault at process start (here: the interpreter is gone; in the field: /dev/null replaced) used
    to kill one worker thread with a traceback while the others went on, so the sweep ran on at half speed and
    said nothing. Now the run gets its claim back, no further run starts, the sweep says why and exits 1, and a
    rerun after the fix completes everything with no attempt spent."""
    store = tmp_path / "s.sqlite"
    runs = fake_runs(5)
    broken = [PlannedRun(r.index, r.config, [str(tmp_path / "no-such-python"), "-c", FAKE_FIT], key=r.key,
                         task="cb", method="fake") if r.index == 1 else r for r in runs]
    lines: list[str] = []
    monkeypatch.setattr(Runner, "_say", lambda self, line: lines.append(line))
    out = Runner(broken, store, "abort", workers=2, retries=0, progress=False).run()
    assert out.aborted is not None and runs[1].key in out.aborted and "no-such-python" in out.aborted
    assert not out.interrupted and out.failed == []
    assert any("starting no more runs" in line for line in lines)
    row = next(r for r in Store(store).rows() if r["run_key"] == runs[1].key)
    assert row["status"] == "pending" and row["attempts"] == 0
    assert len(launched(fake_env)) < 5  # runs queued after the fault were not started
    out = Runner(runs, store, "abort", workers=2, retries=0, progress=False).run()  # retries=0: still it runs
    assert out.aborted is None and len(Store(store).records()) == 5
    assert sorted(launched(fake_env)) == sorted(set(launched(fake_env)))  # and each run trained once


def test_a_stale_claim_of_a_dead_runner_is_taken_over(tmp_path, fake_env):
    store = tmp_path / "s.sqlite"
    runs = fake_runs(2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    assert Store(store).claim(runs[0].key, owner=f"{socket.gethostname()}:{dead.pid}")
    assert not Store(store).claim(runs[1].key + "x") or True
    # A live owner's claim is respected: this process holds runs[1].
    assert Store(store).claim(runs[1].key)
    out = Runner(runs, store, "stale", workers=1, progress=False).run()
    assert out.complete == [runs[0].key] and out.skipped == {runs[1].key: "running elsewhere"}


def test_petune_runs_lists_status(tmp_path, fake_env, monkeypatch, capsys):
    store = tmp_path / "s.sqlite"
    runs = fake_runs(3)
    monkeypatch.setenv("FAKE_FAIL", runs[2].key)
    Runner(runs, store, "listing", workers=1, retries=0, progress=False).run()
    assert runs_main(["--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.count(" complete ") == 2 and out.count(" failed ") == 1 and "exit code 3" in out
    assert "3 run(s): 2 complete, 1 failed" in out
    assert runs_main(["--store", str(store), "--status", "failed", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_key"] for r in rows] == [runs[2].key] and rows[0]["sweep"] == "listing"


def test_petune_runs_refuses_a_missing_store_and_bad_status(tmp_path):
    from pl_petune.cli import main

    assert main(["runs", "--store", str(tmp_path / "none.sqlite")]) == 2
    (tmp_path / "s.sqlite").touch()
    assert main(["runs", "--store", str(tmp_path / "s.sqlite"), "--status", "done"]) == 2


# ---- the real thing: petune fit runs, a SIGKILL mid-sweep, a rerun --------------------------------------------
def _grid(tmp_path: Path, backbone: str, data_dir: str) -> Path:
    from pl_petune.methods import METHODS

    # two real methods when the other methods have landed, else two full-finetuning heads
    if "bitfit" in METHODS:
        axis = "  model.class_path: {values: [pl_petune.methods.FullFinetune, pl_petune.methods.BitFit]}"
    else:
        axis = "  model.init_args.head: {values: [mlp, linear]}"
    text = f"""method: grid
metric: {{name: dev/f1_macro, goal: maximize}}
command: ['${{env}}', '${{interpreter}}', -m, pl_petune, fit, --config, recipes/quickstart.yaml, '${{args}}']
parameters:
{axis}
  run.seed: {{values: [1, 2, 3]}}
  model.init_args.backbone: {{value: {backbone}}}
  data.data_dir: {{value: {data_dir}}}
  data.train_limit: {{value: 32}}
  data.max_length: {{value: 32}}
  trainer.max_epochs: {{value: 1}}
  trainer.enable_progress_bar: {{value: false}}
  run.out_dir: {{value: {tmp_path / 'runs'}}}
"""
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def _statuses(store: Path) -> list[str]:
    try:
        with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute("SELECT status FROM runs")]
    except sqlite3.OperationalError:  # not created yet
        return []


def _sweep_cmd(sweep: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "pl_petune", "sweep", str(sweep), "--workers", "2", "--store", str(store),
            "--no-progress"]


def test_kill_the_runner_midway_then_rerun_gives_six_complete_records(tmp_path, tiny_bert, data_dir, in_root):
    store = tmp_path / "store" / "results.sqlite"
    sweep = _grid(tmp_path, tiny_bert, data_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_sweep_cmd(sweep, store), env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    status: list[str] = []
    while time.time() < deadline and first.poll() is None:
        if store.exists():  # kill once a run is complete and another one is in flight
            os.killpg(first.pid, signal.SIGSTOP)  # frozen while we look: the state seen is the state killed
            status = _statuses(store)  # read-only: a frozen writer may hold the write lock
            if "complete" in status and "running" in status:
                break
            os.killpg(first.pid, signal.SIGCONT)
        time.sleep(0.2)
    assert "complete" in status and first.poll() is None, \
        f"runner ended or no run completed: {first.stdout.read().decode() if first.poll() is not None else status}"
    os.killpg(first.pid, signal.SIGKILL)  # the runner and its petune fit children, mid-way
    first.wait()
    before = {r["run_key"]: r for r in Store(store).records()}
    assert 1 <= len(before) < 6
    in_flight = [r["run_key"] for r in Store(store).rows() if r["status"] == "running"]
    assert in_flight  # killed runs were left claimed by a dead runner

    second = subprocess.run(_sweep_cmd(sweep, store), env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    rows = Store(store).rows()
    records = Store(store).records()
    assert len(rows) == 6 and all(r["status"] == "complete" for r in rows)
    assert len(records) == 6 and len({r["run_key"] for r in records}) == 6
    planned = [json.loads(line)["run_key"] for line in
               (store.parent / "sweeps" / "grid" / "runs.jsonl").read_text().splitlines()]
    assert sorted(planned) == sorted(r["run_key"] for r in records)
    for key, rec in before.items():  # completed runs were not rerun
        assert Store(store).get(key)["created_at"] == rec["created_at"]
        log = (store.parent / "sweeps" / "grid" / "logs" / f"{key}.log").read_text()
        assert log.count("# petune sweep grid: run") == 1
    attempts = {r["run_key"]: r["attempts"] for r in rows}
    assert all(attempts[k] == 2 for k in in_flight)  # the killed ones were claimed again
    assert "6/6 complete" in second.stderr
    # and a third invocation has nothing left to do
    third = subprocess.run(_sweep_cmd(sweep, store), env=env, capture_output=True, text=True, timeout=200)
    assert third.returncode == 0 and "this invocation ran 0" in third.stderr
