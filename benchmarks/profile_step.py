"""Where a training step's CPU time goes, pl_petune against HF Trainer + the same PEFT config, for one method.

Runs ``--steps`` steps of each side (the step functions of ``methods_vs_hf.py``, ABBA order) under cProfile and
prints the functions with the largest own time on each side, so a gap in the ratio table can be traced to what
only one side runs (a hook, a parameter walk, a mode toggle) or to the library behind the method.

Usage: python benchmarks/profile_step.py --method prefix [--steps 8] [--top 12]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats

from _common import add_threads_arg, rte_datamodule, set_threads
from methods_vs_hf import BUILTIN, HFStep, PetuneStep, abba, tuners


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    add_threads_arg(ap)
    a = ap.parse_args()
    if a.method not in BUILTIN + tuners():
        ap.error(f"unknown method {a.method!r}; known: {', '.join(BUILTIN + tuners())}")
    set_threads(a.threads)
    import warnings

    warnings.filterwarnings("ignore")
    dm = rte_datamodule(a.batch_size, a.max_length, pad_to_max_length=True)
    batches = list(itertools.islice(iter(dm.train_dataloader()), a.steps + 1))
    sides = {"pl_petune": PetuneStep(a.method), "HF": HFStep(a.method, dm, a.batch_size)}
    for side in sides.values():  # warm-up step, unprofiled
        side(batches[0])
    profiles = {k: cProfile.Profile() for k in sides}
    for i, batch in enumerate(batches[1:]):
        for k in abba(list(sides), i):
            profiles[k].enable()
            sides[k](batch)
            profiles[k].disable()
    for k, prof in profiles.items():
        stats = pstats.Stats(prof)
        print(f"\n== {a.method}, {k}: {stats.total_tt / a.steps:.3f} s per step (profiled); top own time ==")
        stats.sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
