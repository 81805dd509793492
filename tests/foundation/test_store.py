"""The SQLite results store: atomic, multi-process safe, exactly one row per run, schema-checked."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from pl_petune.records import SCHEMA_VERSION, RecordError, run_key
from pl_petune.store import Store, StoreError


def _record(key: str, status: str = "complete", score: float = 0.5) -> dict:
    return {"schema": SCHEMA_VERSION, "run_key": key, "status": status, "task": "cb", "method": "finetune",
            "protocol": "train_split", "init_seed": 1, "data_seed": 1, "primary_metric": "accuracy",
            "higher_is_better": True, "test_metrics": {"test/accuracy": score}}


def _writer(path: str, worker: int, n: int) -> None:
    store = Store(path)
    for i in range(n):
        store.put(_record(f"k{i}", score=worker / 10), replace=True)  # every worker writes the same keys


def test_concurrent_writers_never_duplicate(tmp_path):
    path = str(tmp_path / "s.sqlite")
    Store(path)
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, w, 20)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = Store(path).records()
    assert sorted(r["run_key"] for r in rows) == sorted(f"k{i}" for i in range(20))


def test_claim_is_exclusive_and_respects_attempts(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    assert store.claim("a", max_attempts=2)
    assert not store.claim("a", max_attempts=2), "a live owner holds it"
    store.mark_failed("a", "boom")
    assert store.claim("a", max_attempts=2)  # second attempt
    store.mark_failed("a", "boom")
    assert not store.claim("a", max_attempts=2), "out of attempts"
    store.put(_record("b"))
    assert not store.claim("b"), "complete runs are never claimed"
    assert store.claim("c", owner="otherhost:1") is True
    assert store.claim("c") is False  # other host's claim with a fresh heartbeat is respected
    assert store.claim("d", owner=f"{__import__('socket').gethostname()}:999999999")
    assert store.claim("d"), "a dead owner on this host is reclaimed"


def test_records_validated_and_newer_schema_refused(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(RecordError, match="record status 'done' unknown; allowed: running, complete, failed"):
        store.put({**_record("x"), "status": "done"})
    with pytest.raises(RecordError, match="lacks test_metrics"):
        store.put({k: v for k, v in _record("x").items() if k != "test_metrics"})
    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.execute("UPDATE meta SET value='99' WHERE key='store_schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema 99, newer than this pl_petune's 1"):
        Store(tmp_path / "s.sqlite")


def test_not_a_store(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_text("hello, I am not a database" * 100)
    with pytest.raises(StoreError, match="is not a pl_petune results store"):
        Store(bad)


def test_run_key_is_order_independent():
    assert run_key({"a": 1, "b": {"c": 2}}) == run_key({"b": {"c": 2}, "a": 1})
    assert run_key({"a": 1}) != run_key({"a": 2})


def test_forget_deletes_all_or_none(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    for key in ("a", "b", "c"):
        store.put(_record(key))
    store.claim("r")
    with pytest.raises(StoreError, match="run 'zz' is not in"):
        store.forget(["a", "zz"])
    with pytest.raises(StoreError, match="run 'r' is running"):
        store.forget(["b", "r"])
    assert sorted(r["run_key"] for r in store.records()) == ["a", "b", "c"]  # nothing was deleted
    store.forget(["a", "c"])
    assert [r["run_key"] for r in store.records()] == ["b"]
    assert store.claim("a"), "a forgotten run is trained again"


def test_petune_runs_forget(tmp_path, capsys):
    from pl_petune.cli import main

    path = tmp_path / "s.sqlite"
    Store(path).put(_record("a"))
    Store(path).put(_record("b"))
    assert main(["runs", "--store", str(path), "--forget", "nope"]) == 2
    assert "run 'nope' is not in" in capsys.readouterr().err
    assert main(["runs", "--store", str(path), "--forget", "a"]) == 0
    assert "forgot 1 run(s)" in capsys.readouterr().err
    assert [r["run_key"] for r in Store(path).rows()] == ["b"]
