"""Who holds a claim on a run: ``host:pid`` owners, their heartbeats, and when a claim is dead.

A runner beats every :func:`heartbeat_s` seconds while its runs train; a claim of another host whose beat is
older than :func:`stale_after_s` is dead. Used by the SQLite store's claims and the run folders' claim files.
"""

from __future__ import annotations

import os
import socket
import time

# A runner beats every HEARTBEAT_S while its runs train; a claim of another host whose beat is older than
# STALE_AFTER_S is dead (minutes, so a dead node's runs are taken over soon; ten missed beats, so a busy
# file system does not make a live claim look dead). Environment overrides: PETUNE_HEARTBEAT_S,
# PETUNE_STALE_AFTER_S; PETUNE_HOST names this node in claims (default: the host name).
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


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


def owner_alive(owner: str | None, heartbeat: float | None) -> bool:
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


__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "host_name", "heartbeat_s", "stale_after_s", "owner_id", "owner_alive"]
