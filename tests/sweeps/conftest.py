"""Shared pieces of the sweep tests: the CLI parser (built once) and the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fit_parser():
    from pl_petune.sweep import FitParser

    return FitParser()


@pytest.fixture
def in_root(monkeypatch):
    """Sweep commands name recipes relative to the repository root, as `wandb agent` runs them."""
    monkeypatch.chdir(ROOT)
    return ROOT
