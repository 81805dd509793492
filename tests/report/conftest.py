"""Fixtures of the report tests (importer, store I/O, published-table reproduction, study page)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the synthetic records of the statistics tests (tests/stats/stats_records.py) serve these tests too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stats"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def fit_parser():
    """The CLI parser a sweep plan uses (built once)."""
    from pl_petune.sweep import FitParser

    return FitParser()


@pytest.fixture
def in_root(monkeypatch):
    """Sweep commands name recipes relative to the repository root, as `wandb agent` runs them."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
