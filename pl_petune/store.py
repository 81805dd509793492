"""The results store: one SQLite file, one row per run, safe with many processes writing at once.

SQLite gives the atomicity: every change is one transaction, in WAL mode, so a process killed mid-write
leaves the previous state, never half a row (the file itself: :mod:`pl_petune.store_file`). Rows are keyed by
the run key, so a record is never duplicated. Sweep runners *claim* a run before starting it (``claim``), which
is how two runners on the same store never run the same run twice (claim owners and their heartbeats:
:mod:`pl_petune.claim_owners`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pl_petune.claim_owners import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    heartbeat_s,
    host_name,
    owner_alive,
    owner_id,
    stale_after_s,
)
from pl_petune.records import SCHEMA_VERSION, RecordError, validate
from pl_petune.store_file import STORE_SCHEMA, StoreError, StoreFile

DEFAULT_STORE = "runs/results.sqlite"
ENV_STORE = "PETUNE_STORE"
ROW_STATUSES = ("pending", "running", "complete", "failed", "interrupted")
_owner_alive = owner_alive  # the older private name, still imported by earlier callers


def default_store_path() -> str:
    """The store ``petune`` uses when none is given: ``$PETUNE_STORE``, else ``runs/results.sqlite``."""
    return os.environ.get(ENV_STORE, DEFAULT_STORE)


class Store:
    """A results store at ``path``.

    Opening never writes: an existing file is checked read-only (``file:...?mode=ro``), so ``petune runs`` and
    ``petune report`` leave any file as they found it and read stores on read-only media. A missing file is
    created whole (built beside it and linked into place, so no reader ever sees a half-made store and an empty
    file is never one of ours).

    Args:
        path: the SQLite file.
        timeout: seconds to wait for another writer's lock.
        readonly: refuse every write (and a missing file) instead of creating the store.

    Raises:
        StoreError: the file is empty, not a pl_petune store, or was written by a newer schema; with
            ``readonly``, a missing file.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0, *,
                 readonly: bool = False) -> None:
        self.path = Path(path or default_store_path())
        self.timeout = timeout
        self.readonly = readonly
        self._file = StoreFile(self.path, timeout, readonly)

    # ---- records -------------------------------------------------------------------------------
    def put(self, record: Mapping[str, Any], *, replace: bool = False) -> None:
        """File ``record`` under ``record['run_key']`` (checked first; see :meth:`put_many`)."""
        self.put_many([record], replace=replace)

    def put_many(self, records: Sequence[Mapping[str, Any]], *, replace: bool = False) -> int:
        """File ``records`` in one transaction: all of them or, on any error, none.

        Every record is validated (:func:`pl_petune.records.validate`) and, when complete, checked against the
        task registry (:func:`pl_petune.record_checks.check_complete`: known task, metric and protocol, scores
        inside the metric's range as fractions, integer seeds). A running or failed record may replace any row
        (a run's lifecycle); a complete record never silently replaces another complete one.

        Args:
            records: run records.
            replace: let complete records replace complete records of the same run key.

        Returns:
            The number of records written.

        Raises:
            RecordError: a record that breaks the schema or the checks (named by run key).
            StoreError: a run key repeated in ``records``, or already complete in the store without ``replace``.
        """
        from pl_petune.record_checks import check_complete

        blobs = []
        seen: set[str] = set()
        for record in records:
            validate(record)
            if record["status"] == "complete":
                check_complete(record)
            key = record["run_key"]
            if key in seen:
                raise StoreError(f"run key {key!r} appears twice in one write; each run has one record")
            seen.add(key)
            blobs.append((key, record["status"], json.dumps(record, sort_keys=True, default=str)))
        now = time.time()
        with self._file.transaction() as db:
            if not replace:
                complete = [k for k, status, _ in blobs if status == "complete"]
                clash = []
                for i in range(0, len(complete), 500):
                    chunk = complete[i:i + 500]
                    clash += [r[0] for r in db.execute(
                        "SELECT run_key FROM runs WHERE status='complete' AND run_key IN "
                        f"({','.join('?' * len(chunk))})",
                        chunk)]
                if clash:
                    raise StoreError(f"run {clash[0]!r} already has a complete record in {self.path}"
                                     + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else "")
                                     + "; nothing was written (replace=True, or petune import --replace, overwrites)")
            db.executemany(
                "INSERT INTO runs (run_key, status, attempts, owner, heartbeat, record, updated_at)"
                " VALUES (?, ?, 1, ?, ?, ?, ?)"
                " ON CONFLICT(run_key) DO UPDATE SET status=excluded.status, record=excluded.record,"
                " heartbeat=excluded.heartbeat, updated_at=excluded.updated_at, error=NULL",
                [(k, status, owner_id(), now, blob, now) for k, status, blob in blobs],
            )
        return len(blobs)

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
        """One summary dict per run: run_key, status, attempts, owner, heartbeat, error, spec, updated_at."""
        cols = ("run_key", "status", "attempts", "owner", "heartbeat", "error", "spec", "updated_at")
        rows = self._all(f"SELECT {', '.join(cols)} FROM runs ORDER BY updated_at, run_key")
        return [dict(zip(cols, r)) for r in rows]

    # ---- claims (sweep runners) -------------------------------------------------------------------
    def claim(self, key: str, max_attempts: int = 3, spec: Mapping[str, Any] | None = None,
              owner: str | None = None) -> bool:
        """Atomically take run ``key`` for this process; False when complete, owned or out of attempts."""
        owner = owner or owner_id()
        with self._file.transaction() as db:
            row = db.execute("SELECT status, attempts, owner, heartbeat FROM runs WHERE run_key=?", (key,)).fetchone()
            if row is not None:
                status, attempts, cur_owner, beat = row
                if status == "complete":
                    return False
                if status == "running" and owner_alive(cur_owner, beat):
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

    def heartbeat(self, keys: Sequence[str], owner: str | None = None) -> int:
        """Renew the claims of ``keys`` held by ``owner`` (a runner calls it every :func:`heartbeat_s`);
        returns how many rows were renewed (a claim taken over by another runner is not)."""
        if not keys:
            return 0
        owner = owner or owner_id()
        now = time.time()
        with self._file.transaction() as db:
            cur = db.executemany("UPDATE runs SET heartbeat=? WHERE run_key=? AND owner=? AND status='running'",
                                 [(now, k, owner) for k in keys])
            return cur.rowcount

    def mark_failed(self, key: str, error: str) -> None:
        with self._file.transaction() as db:
            db.execute(
                "UPDATE runs SET status='failed', error=?, updated_at=? WHERE run_key=? AND status!='complete'",
                (error[-2000:], time.time(), key),
            )

    def release(self, key: str) -> None:
        """Give a claimed run back without spending an attempt (runner interrupted, or the run itself stopped by
        SIGTERM/SIGINT and marked ``interrupted``: resumable, not failed)."""
        with self._file.transaction() as db:
            db.execute(
                "UPDATE runs SET status='pending', attempts=MAX(attempts-1, 0), owner=NULL, updated_at=?"
                " WHERE run_key=? AND status IN ('running', 'interrupted')", (time.time(), key),
            )

    def forget(self, keys: Sequence[str]) -> list[str]:
        """Delete the rows of ``keys`` (all or none), so the next sweep trains them again.

        A key given twice counts once. Unknown keys and runs whose owner is alive are refused with the first
        offending key named; a ``running`` row whose owner is gone (stale) can be forgotten.

        Returns:
            The distinct keys deleted, in the order given.
        """
        wanted = list(dict.fromkeys(keys))
        with self._file.transaction() as db:
            for key in wanted:
                row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE run_key=?", (key,)).fetchone()
                if row is None:
                    raise StoreError(f"run {key!r} is not in {self.path}; `petune runs` lists its run keys")
                if row[0] == "running" and owner_alive(row[1], row[2]):
                    raise StoreError(f"run {key!r} is running (owner {row[1]}); forget it after it ends "
                                     "(or goes stale)")
            db.executemany("DELETE FROM runs WHERE run_key=?", [(k,) for k in wanted])
        return wanted

    # ---- reads ------------------------------------------------------------------------------------
    def _one(self, query: str, args: tuple) -> tuple | None:
        rows = self._file.query(query, args)
        return rows[0] if rows else None

    def _all(self, query: str, args: tuple = ()) -> list[tuple]:
        return self._file.query(query, args)


__all__ = ["Store", "StoreError", "RecordError", "default_store_path", "DEFAULT_STORE", "ENV_STORE", "ROW_STATUSES",
           "STORE_SCHEMA", "HEARTBEAT_S", "STALE_AFTER_S", "host_name", "heartbeat_s", "stale_after_s", "owner_id",
           "owner_alive"]
