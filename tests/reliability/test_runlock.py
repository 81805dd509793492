"""One owner per run folder: a live owner refuses a second one by name; a dead owner's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pl_petune.runlock import LOCK_NAME, RunBusyError, RunLock

HOLD = textwrap.dedent("""
    import sys, time
    from pl_petune.runlock import RunLock
    lock = RunLock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
""")


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_owner_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "runs" / "cb" / "lora" / "k1"
    proc = _holder(run_dir)
    try:
        with pytest.raises(RunBusyError) as info:
            RunLock(run_dir, label="run k1")
        msg = str(info.value)
        assert "\n" not in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg and "run k1" in msg
    finally:
        proc.kill()
        proc.wait()
    with RunLock(run_dir) as lock:  # the kernel dropped the dead holder's lock: taken over
        owner = json.loads((run_dir / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and lock.held


def test_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    lock = RunLock(run_dir)
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_without_flock_a_live_owner_in_the_file_still_refuses(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    monkeypatch.setattr(RunLock, "_flock", staticmethod(lambda fd: None))  # a mount without flock
    with pytest.raises(RunBusyError, match=f"pid {os.getppid()}"):
        RunLock(run_dir)


def test_release_can_remove_the_folders_it_created(tmp_path):
    run_dir = tmp_path / "out" / "cb" / "k"
    RunLock(run_dir).release(discard_created=True)
    assert list(tmp_path.iterdir()) == []
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text("{}")
    RunLock(run_dir).release(discard_created=True)
    assert (run_dir / "record.json").exists()
