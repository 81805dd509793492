"""benchmarks/methods_vs_hf.py: the two sides of a method take turns (ABBA), so a drift in load falls on both."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("methods_vs_hf", ROOT / "benchmarks" / "methods_vs_hf.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_two_sides_alternate_abba_and_each_runs_first_and_last_equally_often():
    """The earlier rotate-then-reverse order ran pl_petune first in every round when there were two sides."""
    bench = _bench()
    orders = [bench.abba(["petune", "hf"], i) for i in range(8)]
    assert orders[:4] == [["petune", "hf"], ["hf", "petune"], ["hf", "petune"], ["petune", "hf"]]
    assert Counter(o[0] for o in orders) == {"petune": 4, "hf": 4}
    many = [bench.abba(list("abcd"), i) for i in range(16)]
    assert all(sorted(o) == list("abcd") for o in many)
    assert Counter(o[0] for o in many) == {k: 4 for k in "abcd"}


def test_the_ratio_is_the_median_of_same_round_ratios():
    bench = _bench()
    # ours 1 s, HF 2 s in round 1 (a load spike on HF's turn); equal afterwards: the median ignores the spike
    assert bench.pair_ratio([1.0, 1.0, 1.0], [2.0, 1.0, 1.0]) == 1.0
    assert bench.pair_ratio([1.0, 1.0, 1.0], [1.1, 1.1, 1.1]) > 1.0  # > 1: ours is faster
