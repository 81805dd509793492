"""The results store: one SQLite file, one row per run, safe with many processes writing at once.

SQLite gives the atomicity: every change is one transaction, in WAL mode, so a process killed mid-write
leaves the previous state, never half a row. Rows are keyed by the run key, so a record is never
duplicated. Sweep runners *claim* a run before starting it (``claim``), which is how two runners on the
same store never run the same run twice.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pl_petune.errors import PetuneError
from pl_petune.records import SCHEMA_VERSION, RecordError, validate

STORE_SCHEMA = 1
DEFAULT_STORE = "runs/results.sqlite"
ENV_STORE = "PETUNE_STORE"
ROW_STATUSES = ("pending", "running", "complete", "failed", "interrupted")
# A claim whose owner has not been heard of for this long is considered dead (cross-host runners).
STALE_AFTER_S = 6 * 3600


class StoreError(PetuneError, RuntimeError):
    """A results store that cannot be used (newer schema, not a store, ...)."""


def default_store_path() -> str:
    return os.environ.get(ENV_STORE, DEFAULT_STORE)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None, heartbeat: float | None) -> bool:
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return heartbeat is not None and time.time() - heartbeat < STALE_AFTER_S


class Store:
    """A results store at ``path`` (created on first use).

    Args:
        path: the SQLite file; its folder is created.
        timeout: seconds to wait for another writer's lock.

    Raises:
        StoreError: the file is not a pl_petune store, or was written by a newer schema.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path or default_store_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs ("
                " run_key TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                " owner TEXT, heartbeat REAL, error TEXT, spec TEXT, record TEXT, updated_at REAL NOT NULL)"
            )
            row = db.execute("SELECT value FROM meta WHERE key='store_schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('store_schema', ?)", (str(STORE_SCHEMA),))
            elif int(row[0]) > STORE_SCHEMA:
                raise StoreError(
                    f"store {self.path} has schema {row[0]}, newer than this pl_petune's {STORE_SCHEMA}; "
                    "upgrade pl_petune to read it"
                )

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a pl_petune results store ({err})") from None
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ---- records -------------------------------------------------------------------------------
    def put(self, record: Mapping[str, Any]) -> None:
        """Insert or replace the record of ``record['run_key']`` (validated first)."""
        validate(record)
        blob = json.dumps(record, sort_keys=True, default=str)
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_key, status, attempts, owner, heartbeat, record, updated_at)"
                " VALUES (?, ?, 1, ?, ?, ?, ?)"
                " ON CONFLICT(run_key) DO UPDATE SET status=excluded.status, record=excluded.record,"
                " heartbeat=excluded.heartbeat, updated_at=excluded.updated_at, error=NULL",
                (record["run_key"], record["status"], owner_id(), time.time(), blob, time.time()),
            )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._one("SELECT record FROM runs WHERE run_key=?", (key,))
        return json.loads(row[0]) if row and row[0] else None

    def status(self, key: str) -> str | None:
        row = self._one("SELECT status FROM runs WHERE run_key=?", (key,))
        return row[0] if row else None

    def records(self, status: str | None = "complete") -> list[dict[str, Any]]:
        """All records (of one status, or all when ``status`` is None), oldest first."""
        query = "SELECT record FROM runs WHERE record IS NOT NULL"
        args: tuple = ()
        if status is not None:
            query += " AND status=?"
            args = (status,)
        out = []
        for (blob,) in self._all(query + " ORDER BY updated_at, run_key", args):
            rec = json.loads(blob)
            if rec.get("schema", 0) > SCHEMA_VERSION:
                raise StoreError(f"record {rec.get('run_key')} has schema {rec['schema']}, newer than {SCHEMA_VERSION}")
            out.append(rec)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One summary dict per run: run_key, status, attempts, owner, error, spec, updated_at."""
        cols = ("run_key", "status", "attempts", "owner", "error", "spec", "updated_at")
        return [dict(zip(cols, r)) for r in self._all(f"SELECT {', '.join(cols)} FROM runs ORDER BY updated_at, run_key")]

    # ---- claims (sweep runners) -------------------------------------------------------------------
    def claim(self, key: str, max_attempts: int = 3, spec: Mapping[str, Any] | None = None,
              owner: str | None = None) -> bool:
        """Atomically take run ``key`` for this process; False when complete, owned or out of attempts."""
        owner = owner or owner_id()
        with self._tx() as db:
            row = db.execute("SELECT status, attempts, owner, heartbeat FROM runs WHERE run_key=?", (key,)).fetchone()
            if row is not None:
                status, attempts, cur_owner, beat = row
                if status == "complete":
                    return False
                if status == "running" and _owner_alive(cur_owner, beat):
                    return False
                if attempts >= max_attempts:
                    return False
            spec_blob = json.dumps(spec, sort_keys=True, default=str) if spec is not None else None
            db.execute(
                "INSERT INTO runs (run_key, status, attempts, owner, heartbeat, spec, updated_at)"
                " VALUES (?, 'running', 1, ?, ?, ?, ?)"
                " ON CONFLICT(run_key) DO UPDATE SET status='running', attempts=runs.attempts+1,"
                " owner=excluded.owner, heartbeat=excluded.heartbeat, error=NULL,"
                " spec=COALESCE(excluded.spec, runs.spec), updated_at=excluded.updated_at",
                (key, owner, time.time(), spec_blob, time.time()),
            )
            return True

    def mark_failed(self, key: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status='failed', error=?, updated_at=? WHERE run_key=? AND status!='complete'",
                (error[-2000:], time.time(), key),
            )

    def release(self, key: str) -> None:
        """Give a claimed run back without spending an attempt (runner interrupted)."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status='pending', attempts=MAX(attempts-1, 0), owner=NULL, updated_at=?"
                " WHERE run_key=? AND status='running'", (time.time(), key),
            )

    def forget(self, keys: Sequence[str]) -> None:
        """Delete the rows of ``keys`` (all or none), so the next sweep trains them again. Unknown keys and runs
        in flight are refused with the first offending key named."""
        with self._tx() as db:
            for key in keys:
                row = db.execute("SELECT status FROM runs WHERE run_key=?", (key,)).fetchone()
                if row is None:
                    raise StoreError(f"run {key!r} is not in {self.path}; `petune runs` lists its run keys")
                if row[0] == "running":
                    raise StoreError(f"run {key!r} is running; forget it after it ends (or goes stale)")
            db.executemany("DELETE FROM runs WHERE run_key=?", [(k,) for k in keys])

    # ---- helpers --------------------------------------------------------------------------------
    def _one(self, query: str, args: tuple) -> tuple | None:
        db = self._connect()
        try:
            return db.execute(query, args).fetchone()
        finally:
            db.close()

    def _all(self, query: str, args: tuple = ()) -> list[tuple]:
        db = self._connect()
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()


__all__ = ["Store", "StoreError", "RecordError", "default_store_path", "DEFAULT_STORE", "ENV_STORE"]
