"""SIGKILL while processes write to the store: it stays a valid SQLite file, and every record in it is whole."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from pl_petune.store import Store

WRITER = textwrap.dedent("""
    import sys
    from pl_petune.store import Store
    store = Store(sys.argv[1])
    i = 0
    while True:
        key = f"k{i % 50}"
        store.put({"schema": 1, "run_key": key, "status": "complete", "task": "cb", "method": "finetune",
                   "protocol": "train_split", "init_seed": i, "data_seed": i, "primary_metric": "accuracy",
                   "higher_is_better": True, "test_metrics": {"test/accuracy": i / 1e6},
                   "payload": "x" * 200_000, "check": i}, replace=True)
        i += 1
""")


def test_sigkill_during_writes_leaves_a_valid_store(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path)
    for round_ in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path)]) for _ in range(2)]
        time.sleep(2.0 + 0.7 * round_)  # let them write for a while, then kill mid-transaction
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        records = Store(path).records()
        assert records, "the writers wrote nothing before being killed"
        for rec in records:  # whole records only: init_seed and check were written together
            assert rec["init_seed"] == rec["check"] and len(rec["payload"]) == 200_000
        assert len({r["run_key"] for r in records}) == len(records) <= 50
