"""A run folder's claim file: which runner, on which node, trains this run now.

Runners on several nodes share one folder tree, not one SQLite file (SQLite's locking is not reliable over a
network file system). A runner takes a run by creating ``<run folder>/.sweep-claim`` with ``O_CREAT|O_EXCL``
(atomic on local and NFSv3+ file systems), renews it by touching it every heartbeat, and removes it when
the run's process ends. A claim is dead when its owner's process is gone (same node) or it has not been
touched for :func:`pl_petune.store.stale_after_s` seconds (another node); a dead claim is taken over by
renaming it aside first, so of two runners taking it over at once only one wins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

CLAIM_FILE = ".sweep-claim"


def _path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CLAIM_FILE


def read_claim(run_dir: str | os.PathLike) -> Optional[dict]:
    """The claim of a run folder (``owner``, ``since``, ``beat``: the file's mtime), or None."""
    path = _path(run_dir)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        info["beat"] = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def claim_alive(info: Optional[dict]) -> bool:
    """Whether a claim's owner lives (see :func:`pl_petune.store._owner_alive`)."""
    from pl_petune.store import _owner_alive

    return info is not None and _owner_alive(info.get("owner"), info.get("beat"))


def acquire(run_dir: str | os.PathLike, owner: str) -> Optional[str]:
    """Take the run folder for ``owner``; returns None when taken, else the live owner that holds it."""
    path = _path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = read_claim(run_dir)
            if info is None:  # being written or just removed: look again
                time.sleep(0.05)
                continue
            if info.get("owner") == owner:
                return None
            if claim_alive(info):
                return str(info.get("owner"))
            _set_aside(path, info)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"owner": owner, "since": time.time()}))
            fh.flush()
            os.fsync(fh.fileno())
        return None
    info = read_claim(run_dir)
    return str(info.get("owner")) if info else "another runner"


def _set_aside(path: Path, stale: dict) -> None:
    """Rename a dead claim aside; put it back if what was renamed is a fresh claim someone just made."""
    aside = path.with_name(f"{path.name}.dead-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        taken = json.loads(aside.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        taken = {}
    if taken.get("owner") != stale.get("owner") or taken.get("since") != stale.get("since"):
        try:
            os.link(aside, path)  # another runner's fresh claim: restore it unless a newer one exists
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def beat(run_dir: str | os.PathLike, owner: str) -> bool:
    """Renew ``owner``'s claim (touch the file); False when the claim is no longer ``owner``'s."""
    info = read_claim(run_dir)
    if info is None or info.get("owner") != owner:
        return False
    try:
        os.utime(_path(run_dir))
    except OSError:
        return False
    return True


def release(run_dir: str | os.PathLike, owner: str) -> None:
    """Remove ``owner``'s claim (another owner's claim is left alone)."""
    info = read_claim(run_dir)
    if info is not None and info.get("owner") == owner:
        _path(run_dir).unlink(missing_ok=True)


__all__ = ["CLAIM_FILE", "read_claim", "claim_alive", "acquire", "beat", "release"]
