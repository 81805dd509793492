"""benchmarks/sweep_workers.py interleaves its arms (ABBA) so a drift in load falls on both."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("sweep_workers", ROOT / "benchmarks" / "sweep_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arms_alternate_abba_and_repeat():
    order = _bench().abba(4)
    assert order == [1, 2, 2, 1, 1, 2, 2, 1]
    assert order.count(1) == order.count(2) == 4
    # each adjacent pair holds both arms, and each arm leads as often as it follows
    pairs = [tuple(order[i:i + 2]) for i in range(0, len(order), 2)]
    assert all(sorted(p) == [1, 2] for p in pairs) and pairs.count((1, 2)) == pairs.count((2, 1))
