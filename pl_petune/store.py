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
import tempfile
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
# A runner beats every HEARTBEAT_S while its runs train; a claim of another host whose beat is older than
# STALE_AFTER_S is dead (minutes, so a dead node's runs are taken over soon; ten missed beats, so a busy
# file system does not make a live claim look dead). Environment overrides: PETUNE_HEARTBEAT_S,
# PETUNE_STALE_AFTER_S; PETUNE_HOST names this node in claims (default: the host name).
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class StoreError(PetuneError, RuntimeError):
    """A results store that cannot be used (newer schema, not a store, ...)."""


def default_store_path() -> str:
    return os.environ.get(ENV_STORE, DEFAULT_STORE)


def host_name() -> str:
    """This node's name in claims: ``$PETUNE_HOST``, else the host name."""
    return os.environ.get("PETUNE_HOST") or socket.gethostname()


def heartbeat_s() -> float:
    """Seconds between a runner's heartbeats (``$PETUNE_HEARTBEAT_S``, default :data:`HEARTBEAT_S`)."""
    return float(os.environ.get("PETUNE_HEARTBEAT_S") or HEARTBEAT_S)


def stale_after_s() -> float:
    """Age of a beat after which another host's claim is dead (``$PETUNE_STALE_AFTER_S``)."""
    return float(os.environ.get("PETUNE_STALE_AFTER_S") or STALE_AFTER_S)


def owner_id() -> str:
    """``host:pid`` of this process, as claims record their owner."""
    return f"{host_name()}:{os.getpid()}"


def _owner_alive(owner: str | None, heartbeat: float | None) -> bool:
    """Whether a claim's owner still lives: on this host, its process exists; elsewhere, it beat recently."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == host_name() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return heartbeat is not None and time.time() - heartbeat < stale_after_s()


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
        if self.path.exists():
            self._check()
        elif readonly:
            raise StoreError(f"no results store at {str(self.path)!r}; pass the path of a results store")
        else:
            try:
                self._create()
            except (OSError, sqlite3.Error) as err:
                raise StoreError(f"cannot create a results store at {str(self.path)!r} ({err})") from None

    # ---- opening ---------------------------------------------------------------------------------
    def _check(self) -> None:
        """Refuse a file that is not a pl_petune store of a schema this version reads (read-only)."""
        if self.path.is_dir():
            raise StoreError(f"{str(self.path)!r} is a folder, not a pl_petune results store")
        if self.path.stat().st_size == 0:
            raise StoreError(f"{str(self.path)!r} is an empty file (0 bytes), not a pl_petune results store; "
                             "delete it, or pass the path of a store")
        side = [Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]
        fresh = not any(p.exists() for p in side)
        db = self._connect_ro()
        try:
            tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
            if "meta" not in tables:
                raise StoreError(f"{str(self.path)!r} is not a pl_petune results store (a SQLite database with "
                                 f"tables: {', '.join(tables) or 'none'}; a store has meta and runs); it was "
                                 "not modified")
            row = db.execute("SELECT value FROM meta WHERE key='store_schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} is not a pl_petune results store ({err})") from None
        finally:
            db.close()
        if row is not None and fresh:
            self._tidy(side)
        if row is None:
            raise StoreError(f"{str(self.path)!r} is not a pl_petune results store (no store_schema in its meta table)")
        if int(row[0]) > STORE_SCHEMA:
            raise StoreError(
                f"store {self.path} has schema {row[0]}, newer than this pl_petune's {STORE_SCHEMA}; "
                "upgrade pl_petune to read it"
            )
        if "runs" not in tables:
            raise StoreError(f"{str(self.path)!r} is not a pl_petune results store (it has no runs table)")

    def _connect_ro(self) -> sqlite3.Connection:
        """A connection that cannot write. On read-only media a WAL store cannot make its ``-shm`` file, so it
        is read as immutable, which is exact only when no un-checkpointed ``-wal`` file holds newer rows."""
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=self.timeout)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError as err:
            if "unable to open" not in str(err) and "readonly" not in str(err):
                raise StoreError(f"{str(self.path)!r} cannot be read ({err})") from None
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} is not a pl_petune results store ({err})") from None
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"{str(self.path)!r} is on read-only media with un-checkpointed writes in {wal.name}; "
                             "copy the store and its -wal file to writable storage to read it")
        try:
            db = sqlite3.connect(uri + "?immutable=1", uri=True)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} cannot be read ({err})") from None
        return db

    def _create(self) -> None:
        """Build an empty store beside ``path`` and link it into place (another process may win the race)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new", dir=self.path.parent)
        os.close(fd)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("BEGIN IMMEDIATE")
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute(
                    "CREATE TABLE runs ("
                    " run_key TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                    " owner TEXT, heartbeat REAL, error TEXT, spec TEXT, record TEXT, updated_at REAL NOT NULL)"
                )
                db.execute("INSERT INTO meta VALUES ('store_schema', ?)", (str(STORE_SCHEMA),))
                db.execute("COMMIT")
            finally:
                db.close()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._check()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            raise StoreError(f"store {str(self.path)!r} was opened read-only")
        if not self.path.exists():
            try:
                self._create()
            except (OSError, sqlite3.Error) as err:
                raise StoreError(f"cannot create a results store at {str(self.path)!r} ({err})") from None
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.OperationalError as err:
            raise StoreError(f"store {str(self.path)!r} cannot be written ({err})") from None
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
        except sqlite3.OperationalError as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            # read-only file or media, a full disk, a lock held past the timeout: one line, nothing written
            raise StoreError(f"store {str(self.path)!r} cannot be written ({err}); nothing was written") from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

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
        with self._tx() as db:
            if not replace:
                complete = [k for k, st, _ in blobs if st == "complete"]
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
                [(k, st, owner_id(), now, blob, now) for k, st, blob in blobs],
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

    def heartbeat(self, keys: Sequence[str], owner: str | None = None) -> int:
        """Renew the claims of ``keys`` held by ``owner`` (a runner calls it every :func:`heartbeat_s`);
        returns how many rows were renewed (a claim taken over by another runner is not)."""
        if not keys:
            return 0
        owner = owner or owner_id()
        now = time.time()
        with self._tx() as db:
            cur = db.executemany("UPDATE runs SET heartbeat=? WHERE run_key=? AND owner=? AND status='running'",
                                 [(now, k, owner) for k in keys])
            return cur.rowcount

    def mark_failed(self, key: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status='failed', error=?, updated_at=? WHERE run_key=? AND status!='complete'",
                (error[-2000:], time.time(), key),
            )

    def release(self, key: str) -> None:
        """Give a claimed run back without spending an attempt (runner interrupted, or the run itself stopped by
        SIGTERM/SIGINT and marked ``interrupted``: resumable, not failed)."""
        with self._tx() as db:
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
        with self._tx() as db:
            for key in wanted:
                row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE run_key=?", (key,)).fetchone()
                if row is None:
                    raise StoreError(f"run {key!r} is not in {self.path}; `petune runs` lists its run keys")
                if row[0] == "running" and _owner_alive(row[1], row[2]):
                    raise StoreError(f"run {key!r} is running (owner {row[1]}); forget it after it ends "
                                     "(or goes stale)")
            db.executemany("DELETE FROM runs WHERE run_key=?", [(k,) for k in wanted])
        return wanted

    # ---- helpers --------------------------------------------------------------------------------
    def _one(self, query: str, args: tuple) -> tuple | None:
        rows = self._all(query, args)
        return rows[0] if rows else None

    def _all(self, query: str, args: tuple = ()) -> list[tuple]:
        if not self.path.exists():
            return []
        side = [Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]
        fresh = not any(p.exists() for p in side)
        db = self._connect_ro()
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()
            if fresh:
                self._tidy(side)

    def _tidy(self, side: list[Path]) -> None:
        """Remove the empty ``-wal``/``-shm`` files a read-only reader of a WAL store leaves behind (it cannot
        delete them itself): the last connection to close does, so one is opened and closed. Skipped where
        the folder is not writable (read-only media) or a writer is active (its files are not ours to touch)."""
        wal = side[0]
        if not (wal.exists() and wal.stat().st_size == 0 and os.access(self.path.parent, os.W_OK)):
            return
        try:
            db = sqlite3.connect(self.path, timeout=0.1)
            try:
                db.execute("SELECT count(*) FROM meta").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            pass


__all__ = ["Store", "StoreError", "RecordError", "default_store_path", "DEFAULT_STORE", "ENV_STORE"]
