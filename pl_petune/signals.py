"""SIGTERM and SIGINT during ``petune fit``: stop at a clean point, keep the resumable state, say so in one line.

SLURM and Kubernetes send SIGTERM before they kill a job; a user presses Ctrl+C. Lightning turns SIGTERM into a
``SIGTERMException`` (a ``SystemExit`` with code 0: the run looked successful) and Ctrl+C into ``sys.exit(1)``,
and neither leaves a record. :class:`InterruptGuard` takes both signals for the length of a ``fit``:

* before training runs (building the model, tokenizing) a signal raises :class:`RunInterrupted` at once;
* once training runs it only sets a flag, and :class:`InterruptGuard` (also a callback) raises
  :class:`RunInterrupted` at the next batch boundary, so no checkpoint or record is cut mid-write;
* a second signal raises at once (the user insists).

The run's checkpoint then is the last ``last.ckpt``, saved at the end of an epoch's validation. A mid-epoch
checkpoint is not written: Lightning cannot resume a plain ``DataLoader`` mid-epoch exactly (it warns that
the results are unreliable), and resuming from the epoch boundary replays the lost batches bit for bit, so
the resumed run ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

HANDLED = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """A fit stopped by a signal (a ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception``
    in a library swallows it).

    Attributes:
        signum: the signal's number; ``name`` is e.g. ``SIGTERM``; ``exit_code`` is the shell's ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptGuard(Callback):
    """Own SIGTERM/SIGINT while in its ``with`` block; as a Trainer callback, raise at batch boundaries.

    Handlers are installed only from the main thread (``signal`` allows nothing else) and the previous ones are
    restored on exit. Lightning's own SIGTERM handler, installed when a fit starts, chains to this one.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._pending: Optional[int] = None
        self._deferring = False

    @property
    def received(self) -> Optional[int]:
        """The number of the signal received, if any."""
        return self._pending

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        first = self._pending is None
        self._pending = signum
        if not self._deferring or not first:
            raise RunInterrupted(signum)

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._deferring = False

    def _check(self) -> None:
        if self._pending is not None:
            raise RunInterrupted(self._pending)

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._check()
        self._deferring = True

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._check()

    @override
    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._check()

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._check()

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._check()
        self._deferring = False  # the test pass and the record follow: a signal there stops at once


def interrupt_of(err: BaseException | None) -> Optional[RunInterrupted]:
    """The :class:`RunInterrupted` in ``err``'s chain; Lightning's SIGTERM exit and Ctrl+C exit count too."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RunInterrupted):
            return err
        if isinstance(err, SIGTERMException):
            return RunInterrupted(signal.SIGTERM)
        if isinstance(err, KeyboardInterrupt):
            return RunInterrupted(signal.SIGINT)
        err = err.__cause__ or err.__context__
    return None


__all__ = ["InterruptGuard", "RunInterrupted", "interrupt_of", "HANDLED"]
