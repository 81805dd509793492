"""One owner per run folder: an advisory lock on ``<run_dir>/.lock`` that names its owner.

Two ``petune fit`` of the same config (or a rerun while an orphan of an earlier attempt still trains) would
write the same checkpoints and records. The first process takes ``fcntl.flock`` on the lock file and writes its
pid, host and start time into it; a second one is refused with one line naming that owner. The kernel drops the
lock when its process dies, however it dies, so the lock of a killed run is simply taken over. On file systems
without ``flock`` (some Lustre mounts) the owner written in the file decides: a live process on this host, or a
lock refreshed within :data:`STALE_AFTER_S` on another host, keeps it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from pl_petune.errors import PetuneError

LOCK_NAME = ".lock"
STALE_AFTER_S = 6 * 3600


class RunBusyError(PetuneError, RuntimeError):
    """The run folder is owned by another live process."""


def _proc_start(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (field 22 of ``/proc/<pid>/stat``): tells a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict[str, Any]) -> bool:
    host, pid = owner.get("host"), owner.get("pid")
    if not isinstance(pid, int):
        return False
    if host != socket.gethostname():
        return time.time() - float(owner.get("since", 0)) < STALE_AFTER_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = owner.get("start")
    return start is None or _proc_start(pid) in (None, start)


def describe(owner: dict[str, Any]) -> str:
    """``pid 123 on host node7 since 2026-12-03T07:00:00Z`` (what is known of a lock's owner)."""
    since = owner.get("since")
    when = time.strftime(" since %Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, (int, float)) else ""
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}{when}"


class RunLock:
    """Exclusive ownership of a run folder for the life of this object (or of the process).

    Args:
        run_dir: the run folder; it (and its parents) are created when missing, and removed again by
            :meth:`release` ``(discard_created=True)`` if they hold nothing but the lock (a run refused later
            by its data leaves no folder behind).
        label: how the refusal names the run (e.g. ``run 1a2b3c``).

    Raises:
        RunBusyError: another live process owns ``run_dir``; the message names it.

    Example:
        >>> with RunLock(tmp_path / "run"):  # doctest: +SKIP
        ...     train()
    """

    def __init__(self, run_dir: str | os.PathLike, label: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.label = label or str(self.run_dir)
        self._fd: Optional[int] = None
        self._created: list[Path] = []
        self.acquire()

    def acquire(self) -> None:
        missing = []
        for parent in [self.run_dir, *self.run_dir.parents]:
            if parent.exists():
                break
            missing.append(parent)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            owner = self._read(fd)
            if locked is False or (locked is None and owner and owner.get("pid") != os.getpid() and _alive(owner)):
                os.close(fd)
                self._discard_created()
                who = describe(owner) if owner else "another process"
                raise RunBusyError(f"{self.label} is being trained by {who} (lock {self.path}); wait for it to end "
                                   "or stop that process, then rerun")
            try:  # the file may have been replaced between open and lock: only the lock on the current file counts
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "start": _proc_start(os.getpid()),
              "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)

    @staticmethod
    def _flock(fd: int) -> Optional[bool]:
        """True: locked; False: held by another process; None: this file system has no flock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise
        return True

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            data = os.pread(fd, 4096, 0)
            owner = json.loads(data.decode() or "{}")
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _discard_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def release(self, discard_created: bool = False) -> None:
        """Give the folder up; with ``discard_created``, remove the lock and the folders this lock created, if
        they hold nothing else."""
        if self._fd is None:
            return
        if discard_created and self._created:
            only_lock = [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]
            if only_lock:
                self.path.unlink(missing_ok=True)
                self._discard_created()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["RunLock", "RunBusyError", "LOCK_NAME", "describe"]
