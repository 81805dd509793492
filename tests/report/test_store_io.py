"""Opening a store never writes; put/put_many refuse records whose numbers would be reported wrongly
(issue 15 item 4, issue 18 "In")."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stats_records import make_record
from pl_petune.cli import main as cli_main
from pl_petune.data.protocols import PROTOCOLS
from pl_petune.record_checks import PROTOCOLS as CHECKED_PROTOCOLS
from pl_petune.records import RecordError
from pl_petune.store import Store, StoreError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def foreign(tmp_path) -> Path:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("argv", [["runs"], ["report", "--format", "md"], ["runs", "--forget", "x"]])
def test_another_applications_sqlite_is_refused_and_untouched(foreign, tmp_path, capsys, argv):
    before = _sha(foreign)
    assert cli_main([argv[0], "--store", str(foreign), *argv[1:], *(["--out", str(tmp_path / "r")]
                                                                   if argv[0] == "report" else [])]) == 2
    _one_line(capsys, "is not a pl_petune results store")
    assert _sha(foreign) == before
    assert sorted(p.name for p in foreign.parent.iterdir()) == ["app.db"], "no -wal/-shm or other file"
    db = sqlite3.connect(f"{foreign.as_uri()}?mode=ro", uri=True)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


def test_a_write_into_another_applications_sqlite_is_refused(foreign):
    before = _sha(foreign)
    with pytest.raises(StoreError, match="not a pl_petune results store"):
        Store(foreign).put(make_record("cb", "finetune", 0.5, 1))
    assert _sha(foreign) == before


@pytest.mark.parametrize("argv", [["runs"], ["report", "--format", "md"], ["import"]])
def test_zero_byte_file_never_becomes_a_store(tmp_path, capsys, argv):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    if argv[0] == "import":
        src = tmp_path / "r.csv"
        src.write_text("task,method,seed,metric,value\ncb,finetune,1,f1_macro,0.5\n")
        argv = ["import", str(src)]
    assert cli_main([*argv, "--store", str(empty), *(["--out", str(tmp_path / "r")] if argv[0] == "report" else [])]) == 2
    _one_line(capsys, "empty file (0 bytes), not a pl_petune results store")
    assert empty.stat().st_size == 0
    with pytest.raises(StoreError, match="empty file"):
        Store(empty)


def _readonly_copy(src: Path) -> tuple[Path, list[str]]:
    """``src`` copied into a folder nobody may write, and the argv prefix that runs as a user who cannot."""
    root = Path(tempfile.mkdtemp(prefix="petune-ro-"))
    os.chmod(root, 0o755)
    media = root / "media"
    media.mkdir()
    shutil.copy(src, media / "results.sqlite")
    os.chmod(media / "results.sqlite", 0o444)
    os.chmod(media, 0o555)
    out = root / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    if os.geteuid() != 0:
        return media / "results.sqlite", []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot take write access away")
    _skip_unless_nobody_can_run_petune()
    return media / "results.sqlite", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_store_on_read_only_media_is_readable(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    for seed in range(1, 4):
        store.put(make_record("cb", "finetune", 0.5 + seed / 100, seed))
        store.put(make_record("cb", "lora", 0.6 + seed / 100, seed))
    path, prefix = _readonly_copy(tmp_path / "s.sqlite")
    before = _sha(path)
    env = {**os.environ, "HOME": str(path.parent.parent / "out"), "MPLCONFIGDIR": str(path.parent.parent / "out")}
    out = path.parent.parent / "out" / "rep"
    try:
        stdout = ""
        for argv in (["runs", "--store", str(path)],
                     ["report", "--store", str(path), "--out", str(out), "--format", "md"]):
            proc = subprocess.run([*prefix, sys.executable, "-m", "pl_petune", *argv], capture_output=True, text=True,
                                  env=env, timeout=120)
            assert proc.returncode == 0, proc.stderr
            stdout += proc.stdout
        assert "6 run(s): 6 complete" in stdout
        assert "| CB |" in (out / "table2.md").read_text()
        assert _sha(path) == before and sorted(p.name for p in path.parent.iterdir()) == ["results.sqlite"]
        if prefix or os.geteuid() != 0:  # the reader really could not write there
            with pytest.raises(StoreError, match="read-only"):
                Store(path, readonly=True).put(make_record("cb", "finetune", 0.5, 9))
    finally:
        os.chmod(path.parent, 0o755)
        shutil.rmtree(path.parent.parent, ignore_errors=True)


def test_store_protocols_match_the_data_module():
    assert CHECKED_PROTOCOLS == PROTOCOLS


@pytest.mark.parametrize("change,needle", [
    ({"test_metrics": {"test/f1_macro": 70.0}}, "test/f1_macro = 70 is outside f1_macro's range [0, 1] (70 looks like a percent"),
    ({"test_metrics": {"test/f1_macro": 1.2}}, "outside f1_macro's range [0, 1]"),
    ({"test_metrics": {"test/f1_macro": -0.1}}, "outside f1_macro's range"),
    ({"test_metrics": {"test/f1_macro": float("inf")}}, "outside f1_macro's range"),
    ({"test_metrics": {"test/f1_macro": "0.7"}}, "is not a number"),
    ({"test_metrics": {"test/accuracy": 0.7}}, "test_metrics lacks test/f1_macro (the primary metric); it has: test/accuracy"),
    ({"primary_metric": "f1"}, "primary_metric 'f1' is not a metric of cb; known: f1_macro, accuracy"),
    ({"higher_is_better": False}, "higher_is_better False contradicts f1_macro"),
    ({"protocol": "fair"}, "unknown protocol 'fair'; known: train_split, petuning"),
    ({"task": "cbb"}, "unknown task 'cbb'; known: boolq, cb"),
    ({"init_seed": float("nan")}, "init_seed nan is not an integer seed"),
    ({"data_seed": "1"}, "data_seed '1' is not an integer seed"),
    ({"method": ""}, "method '' must be a non-empty name"),
])
def test_put_refuses_records_that_would_print_wrong(tmp_path, change, needle):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(RecordError) as err:
        store.put({**make_record("cb", "finetune", 0.7, 1), **change})
    assert needle in str(err.value)
    assert store.records() == []


def test_put_never_silently_overwrites_a_complete_record(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    rec = make_record("cb", "finetune", 0.7, 1)
    store.put(rec)
    with pytest.raises(StoreError, match=f"run '{rec['run_key']}' already has a complete record"):
        store.put({**rec, "test_metrics": {"test/f1_macro": 0.1}})
    assert store.get(rec["run_key"])["test_metrics"]["test/f1_macro"] == 0.7
    store.put({**rec, "test_metrics": {"test/f1_macro": 0.1}}, replace=True)
    assert store.get(rec["run_key"])["test_metrics"]["test/f1_macro"] == 0.1
    store.put({**rec, "status": "running"})  # a run's lifecycle: a rerun starts over a complete record
    store.put(rec)  # and completes over its own running record
    assert store.status(rec["run_key"]) == "complete"


def test_put_many_is_one_transaction_all_or_none(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    good = [make_record("cb", "finetune", 0.5, s) for s in range(1, 1001)]
    t0 = time.perf_counter()
    assert store.put_many(good) == 1000
    assert time.perf_counter() - t0 < 15, "1,000 records must not take one fsync each (34 s before)"
    assert len(store.records()) == 1000
    batch = [make_record("cb", "lora", 0.5, s) for s in range(1, 50)] + [make_record("cb", "lora", 1.5, 99)]
    with pytest.raises(RecordError, match="outside"):
        store.put_many(batch)
    with pytest.raises(StoreError, match="appears twice in one write"):
        store.put_many([batch[0], batch[0]])
    with pytest.raises(StoreError, match="already has a complete record .* \\(and 1 more\\)"):
        store.put_many([make_record("cb", "lora", 0.5, 500), good[3], good[4]])
    assert len(store.records()) == 1000, "a refused batch writes nothing"


def test_forget_a_stale_run_and_a_repeated_key(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    store.put(make_record("cb", "finetune", 0.5, 1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    assert store.claim("stale", owner=f"{socket.gethostname()}:{dead.pid}")
    assert store.forget(["stale"]) == ["stale"], "a stale run (owner gone) can be forgotten"
    assert store.claim("live")
    with pytest.raises(StoreError, match="run 'live' is running"):
        store.forget(["live"])
    key = store.records()[0]["run_key"]
    assert store.forget([key, key]) == [key]


def test_reading_a_store_leaves_no_side_files(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    store.put(make_record("cb", "finetune", 0.5, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]
    assert cli_main(["runs", "--store", str(tmp_path / "s.sqlite")]) == 0
    assert cli_main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r"), "--format", "md"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.sqlite"], "a reader left -wal/-shm files"


def _skip_unless_nobody_can_run_petune() -> None:
    """The read-only case runs as user nobody; a checkout under a private folder (mode 0700) is unreadable to
    it, and then the test cannot run: say so instead of failing on the import."""
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import pl_petune"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("user nobody cannot import pl_petune from this checkout (a parent folder is private): "
                    + probe.stderr.strip().splitlines()[-1][:200])
