"""The SQLite file under the results store: created whole, checked before use, read without writing.

A missing file is built beside its path and linked into place, so no reader sees a half-made store and an empty
file is never one of ours. An existing file is checked read-only (``file:...?mode=ro``): a file that is not a
pl_petune store, or of a newer schema, is refused and left as found. Every write is one ``BEGIN IMMEDIATE``
transaction in WAL mode, so a process killed mid-write leaves the previous state. What the rows mean is
:mod:`pl_petune.store`.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pl_petune.errors import PetuneError

STORE_SCHEMA = 1
_CREATE_RUNS = ("CREATE TABLE runs ("
                " run_key TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                " owner TEXT, heartbeat REAL, error TEXT, spec TEXT, record TEXT, updated_at REAL NOT NULL)")


class StoreError(PetuneError, RuntimeError):
    """A results store that cannot be used (newer schema, not a store, ...)."""


class StoreFile:
    """The SQLite file of a results store at ``path``: opened (checked, or created unless ``readonly``).

    Its arguments and errors are :class:`~pl_petune.store.Store`'s, which opens its file through this class.
    """

    def __init__(self, path: Path, timeout: float, readonly: bool) -> None:
        self.path, self.timeout, self.readonly = path, timeout, readonly
        if self.path.exists():
            self._check()
        elif readonly:
            raise StoreError(f"no results store at {str(self.path)!r}; pass the path of a results store")
        else:
            self._create_or_refuse()

    def _side_files(self) -> list[Path]:
        return [Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]

    def _check(self) -> None:
        """Refuse a file that is not a pl_petune store of a schema this version reads (read-only)."""
        if self.path.is_dir():
            raise StoreError(f"{str(self.path)!r} is a folder, not a pl_petune results store")
        if self.path.stat().st_size == 0:
            raise StoreError(f"{str(self.path)!r} is an empty file (0 bytes), not a pl_petune results store; "
                             "delete it, or pass the path of a store")
        side = self._side_files()
        fresh = not any(p.exists() for p in side)
        db = self.connect_readonly()
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

    def connect_readonly(self) -> sqlite3.Connection:
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

    def _create_or_refuse(self) -> None:
        try:
            self._create()
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot create a results store at {str(self.path)!r} ({err})") from None

    def _create(self) -> None:
        """Build an empty store beside ``path`` and link it into place (another process may win the race)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new", dir=self.path.parent)
        os.close(fd)
        try:
            db = sqlite3.connect(staging, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("BEGIN IMMEDIATE")
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute(_CREATE_RUNS)
                db.execute("INSERT INTO meta VALUES ('store_schema', ?)", (str(STORE_SCHEMA),))
                db.execute("COMMIT")
            finally:
                db.close()
            with open(staging, "rb") as fh:
                os.fsync(fh.fileno())
            try:
                os.link(staging, self.path)
            except FileExistsError:
                pass
        finally:
            Path(staging).unlink(missing_ok=True)
        self._check()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            raise StoreError(f"store {str(self.path)!r} was opened read-only")
        if not self.path.exists():
            self._create_or_refuse()
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole, or rolled back whole on any error."""
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

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """The rows of a read-only query (none when the file is gone)."""
        if not self.path.exists():
            return []
        side = self._side_files()
        fresh = not any(p.exists() for p in side)
        db = self.connect_readonly()
        try:
            return db.execute(sql, args).fetchall()
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


__all__ = ["StoreFile", "StoreError", "STORE_SCHEMA"]
