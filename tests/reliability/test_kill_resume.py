"""SIGKILL during a fit: rerunning the same command resumes from last.ckpt and ends with the same numbers as
an uninterrupted run, one record, never a corrupt store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _argv(tiny_bert, data_dir, out: Path) -> list[str]:
    return [sys.executable, "-m", "pl_petune", "fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"),
            "--model.init_args.backbone", tiny_bert, "--model.init_args.lr", "1e-3",
            "--data.data_dir", data_dir, "--data.train_limit", "96", "--data.max_length", "48",
            "--data.batch_size", "8", "--trainer.max_epochs", "4", "--early_stopping.patience", "10",
            "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(out / "runs"), "--run.store", str(out / "store.sqlite")]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_matches_uninterrupted(tmp_path, tiny_bert, data_dir, kill_at):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    ref = subprocess.run(_argv(tiny_bert, data_dir, ref_dir), env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    (reference,) = Store(ref_dir / "store.sqlite").records()

    proc = subprocess.Popen(_argv(tiny_bert, data_dir, kill_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = kill_at(proc, "cb/finetune/*/checkpoints/last.ckpt", kill_dir / "runs", lambda c: True)
    assert ckpt["epoch"] == 0
    rows = Store(kill_dir / "store.sqlite").rows()
    assert [r["status"] for r in rows] == ["running"], "the killed run is recorded as started, not complete"

    again = subprocess.run(_argv(tiny_bert, data_dir, kill_dir), env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run" in again.stderr
    (resumed,) = Store(kill_dir / "store.sqlite").records()
    assert resumed["run_key"] == reference["run_key"] and resumed["resumed"] is True
    assert resumed["test_metrics"] == pytest.approx(reference["test_metrics"], abs=1e-6)
    assert resumed["best_epoch"] == reference["best_epoch"] and resumed["steps"] == reference["steps"]
