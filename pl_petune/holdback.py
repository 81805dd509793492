"""Hold back what libraries print while a run is being set up; show it only once training really starts.

Lightning prints its banners ("GPU available ...", the SLURM hint), transformers warns about fresh heads, and
Python warnings fire while the model and trainer are built, before the data files are even read. When a data
or config check then refuses the run, those lines bury the one line that says what is wrong. :class:`HoldBack`
collects everything written to ``sys.stdout``/``sys.stderr`` and every record the existing logging handlers
would emit, in order; :meth:`HoldBack.release` replays it (training starts), :meth:`HoldBack.drop` forgets it
(the run is refused, and its one line is all the user sees).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional, TextIO


class _Tee:
    """A text stream that appends ``(stream, text)`` to a shared list instead of writing."""

    def __init__(self, target: TextIO, sink: list[tuple[Any, Any]]) -> None:
        self._target, self._sink = target, sink

    def write(self, text: str) -> int:
        self._sink.append((self._target, text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _HoldFilter(logging.Filter):
    def __init__(self, handler: logging.Handler, sink: list[tuple[Any, Any]]) -> None:
        super().__init__()
        self._handler, self._sink = handler, sink
        self.active = True

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        self._sink.append((self._handler, record))
        return False


class HoldBack:
    """Collect stdout, stderr and logging output until :meth:`release` or :meth:`drop`.

    Logging handlers that exist when holding starts are held (Lightning's and transformers' handlers are made at
    import); writes to ``sys.stdout``/``sys.stderr`` are held whatever writes them.

    Example:
        >>> hold = HoldBack().start()
        >>> print("banner")          # held
        >>> hold.release()           # now printed
    """

    def __init__(self) -> None:
        self._sink: list[tuple[Any, Any]] = []
        self._filters: list[tuple[logging.Handler, _HoldFilter]] = []
        self._saved: Optional[tuple[TextIO, TextIO]] = None

    @property
    def holding(self) -> bool:
        return self._saved is not None

    def start(self) -> "HoldBack":
        if self.holding:
            return self
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self._sink), _Tee(sys.stderr, self._sink)
        loggers = [logging.getLogger()] + [log for log in logging.Logger.manager.loggerDict.values()
                                           if isinstance(log, logging.Logger)]
        seen: set[int] = set()
        for log in loggers:
            for handler in log.handlers:
                if id(handler) not in seen:
                    seen.add(id(handler))
                    f = _HoldFilter(handler, self._sink)
                    handler.addFilter(f)
                    self._filters.append((handler, f))
        return self

    def _stop(self) -> list[tuple[Any, Any]]:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
        for handler, f in self._filters:
            f.active = False
            handler.removeFilter(f)
        self._filters = []
        held, self._sink[:] = list(self._sink), []
        return held

    def release(self) -> None:
        """Stop holding and replay everything held, in the order it came."""
        for where, item in self._stop():
            if isinstance(item, logging.LogRecord):
                where.handle(item)
            else:
                where.write(item)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()

    def drop(self) -> None:
        """Stop holding and forget what was held."""
        self._stop()


__all__ = ["HoldBack"]
