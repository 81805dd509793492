"""A deterministic SIGKILL: freeze the process group the moment a new ``last.ckpt`` lands, look inside it, then
kill it there or let it go on. Timing alone cannot tell a stage-2 save from a finished run on a busy machine."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch


def kill_at_checkpoint(proc: subprocess.Popen, pattern: str, root: Path,
                       wanted: Callable[[dict[str, Any]], bool], timeout: float = 600) -> dict[str, Any]:
    """SIGKILL ``proc``'s group right after the first ``last.ckpt`` (``root.glob(pattern)``) for which
    ``wanted(checkpoint)`` holds; returns that checkpoint. Fails if the process ends first."""
    seen, deadline = None, time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = list(root.glob(pattern))
        stamp = found[0].stat().st_mtime_ns if found else None
        if stamp is not None and stamp != seen:
            os.killpg(proc.pid, signal.SIGSTOP)  # frozen just after the save: it cannot run on to the end
            seen = stamp
            ckpt = torch.load(found[0], map_location="cpu", weights_only=False)  # written atomically by Lightning
            if wanted(ckpt):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return ckpt
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"the run ended (rc={proc.returncode}) before a wanted checkpoint was saved")


@pytest.fixture
def kill_at() -> Callable[..., dict[str, Any]]:
    return kill_at_checkpoint
