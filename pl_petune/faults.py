"""What ``petune fit|validate|test`` does about faults and bad input, in one place the CLI calls at five points.

* parse: jsonargparse refuses duplicate YAML keys (:func:`~pl_petune.preflight.strict_yaml`), and recipes must
  be UTF-8 (:func:`~pl_petune.preflight.check_recipe_files`);
* before classes are built: :func:`~pl_petune.preflight.check_config`, then the run folder's lock
  (:class:`~pl_petune.runlock.RunLock`) and the choice of an intact resume file
  (:func:`~pl_petune.checkpoint_io.pick_resume`); library output is held back (:class:`~pl_petune.holdback.HoldBack`);
* the trainer: atomic checkpoint writes (:class:`~pl_petune.checkpoint_io.AtomicCheckpointIO`) and the signal
  guard (:class:`~pl_petune.signals.InterruptGuard`) as plugin and callback;
* training starts: the held output is shown;
* the end: every error becomes one line (:func:`one_line`) with its exit code, the lock is released.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional

from pl_petune.checkpoint_io import NO_SPACE, AtomicCheckpointIO, DiskFullError, disk_full_message, pick_resume
from pl_petune.errors import PetuneError
from pl_petune.holdback import HoldBack
from pl_petune.runlock import RunLock
from pl_petune.signals import InterruptGuard, RunInterrupted, interrupt_of

EXIT_USAGE = 2


class RunGuard:
    """The fault handling of one ``petune`` Lightning command (one per process run).

    Args:
        hold_output: hold library output until training starts (only where :meth:`close` is sure to run, as in
            ``run_lightning_cli``; a bare ``make_cli`` from Python keeps its output as it comes).

    Attributes:
        hold: library output held until training starts.
        interrupts: the SIGTERM/SIGINT guard (also a Trainer callback).
        lock: the run folder's lock, once taken.
    """

    def __init__(self, hold_output: bool = True) -> None:
        self.hold_output = hold_output
        self.hold = HoldBack()
        self.interrupts = InterruptGuard()
        self.lock: Optional[RunLock] = None
        self.key: Optional[str] = None
        self.run_dir: Optional[Path] = None
        self.started = False

    # ---- before classes are built -----------------------------------------------------------------------------
    def setup_begins(self) -> None:
        """Parsing is done: from now on library banners wait until training starts."""
        if self.hold_output:
            self.hold.start()

    def take_run(self, run_dir: Path, key: str) -> None:
        """Own ``run_dir`` (refused with :class:`~pl_petune.runlock.RunBusyError` when another process does)."""
        if self.lock is not None:  # a process that builds several CLIs (make_cli from Python) owns one run at a time
            self.lock.release()
        self.lock = RunLock(run_dir, label=f"run {key}")
        self.key, self.run_dir = key, Path(run_dir)

    def resume_file(self, ckpt_dir: Path) -> Optional[Path]:
        """The intact checkpoint to resume from (damaged ones set aside with a warning), or None."""
        return pick_resume(ckpt_dir)

    # ---- the trainer ------------------------------------------------------------------------------------------
    def trainer_plugins(self, plugins: Any) -> list[Any]:
        """``plugins`` plus :class:`AtomicCheckpointIO`, unless the user configured a CheckpointIO of their own."""
        from lightning.fabric.plugins import CheckpointIO

        current = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else [])
        if not any(isinstance(p, CheckpointIO) for p in current):
            current.append(AtomicCheckpointIO())
        return current

    # ---- training starts --------------------------------------------------------------------------------------
    def training_begins(self) -> None:
        """All checks passed and the run is recorded: show what was held back."""
        self.started = True
        self.hold.release()

    def interrupt_line(self, err: BaseException) -> Optional[str]:
        """The one line for a run a signal stopped (None if ``err`` is no interrupt)."""
        stop = interrupt_of(err)
        if stop is None:
            return None
        if self.run_dir is None or not self.started:
            return f"{stop} before training started; nothing was recorded: rerun the same command"
        last = self.run_dir / "checkpoints" / "last.ckpt"
        where = f"resumes from {last}" if last.is_file() else "starts over (no checkpoint was saved yet)"
        return f"{stop}; run {self.key} is marked interrupted: rerun the same command and it {where}"

    # ---- the end ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Drop held output (an error's one line is all that is shown) and give the run folder up; a folder this
        process created and wrote nothing into is removed."""
        self.hold.drop()
        if self.lock is not None:
            self.lock.release(discard_created=True)
            self.lock = None


def disk_full_line(err: BaseException) -> Optional[str]:
    """The one line for a write that failed for lack of space anywhere in ``err``'s chain, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return str(err)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return disk_full_message(err.filename or "a file", err)
        if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
            return "disk full writing the results store (database or disk is full); free space there and rerun"
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


def one_line(err: BaseException) -> Optional[tuple[str, int]]:
    """``(message, exit code)`` for an error the user can act on, else None (a bug: let the traceback show).

    Interrupts exit ``128 + signum`` (a shell's convention, non-zero so schedulers requeue); a full disk, a
    :class:`~pl_petune.errors.PetuneError` and Lightning's ``MisconfigurationException`` exit 2.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    stop = interrupt_of(err)
    if stop is not None:
        return str(stop), stop.exit_code
    full = disk_full_line(err)
    if full is not None:
        return full, EXIT_USAGE
    cause: Optional[BaseException] = err
    seen = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, PetuneError):
            return str(cause), EXIT_USAGE
        if isinstance(cause, MisconfigurationException):
            return " ".join(str(cause).split()), EXIT_USAGE
        cause = cause.__cause__ or cause.__context__
    return None


__all__ = ["RunGuard", "one_line", "disk_full_line", "RunInterrupted", "EXIT_USAGE"]
