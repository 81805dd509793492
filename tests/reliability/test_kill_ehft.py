"""SIGKILL during the second stage of a two-stage run (LP-FT, and EH-FT whose stage 2 has dropped the LoRA layers,
through HeadWarmStart inside `petune fit`): rerunning resumes in stage 2 and ends with the numbers of an
uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pl_petune.packaged import config_args
import pytest

from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _argv(tiny_bert, data_dir, out: Path, recipe: str) -> list[str]:
    return [sys.executable, "-m", "pl_petune", "fit", *config_args(str(ROOT / "recipes" / "methods" / f"{recipe}.yaml")),
            "--model.init_args.backbone", tiny_bert, "--data.data_dir", data_dir, "--data.train_limit", "96",
            "--data.max_length", "48", "--data.batch_size", "8", "--trainer.max_epochs", "4",
            "--early_stopping.patience", "10", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(out / "runs"), "--run.store", str(out / "store.sqlite")]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _warm_start_state(ckpt: dict) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("HeadWarmStart")]
    return state


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["lpft", "ehft_lora"])
def test_sigkill_in_stage_two_then_resume_matches_uninterrupted(recipe, tmp_path, tiny_bert, data_dir, kill_at):
    ref = subprocess.run(_argv(tiny_bert, data_dir, tmp_path / "ref", recipe), env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    (reference,) = Store(tmp_path / "ref" / "store.sqlite").records()
    assert reference["extra"]["head_warm_start"]["switch_epoch"] == 1

    out = tmp_path / "kill"
    proc = subprocess.Popen(_argv(tiny_bert, data_dir, out, recipe), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = kill_at(proc, "cb/*/*/checkpoints/last.ckpt", out / "runs",
                   lambda c: _warm_start_state(c)["stage"] == 2)
    assert ckpt["epoch"] < 3, "killed with stage-2 epochs still to run"
    assert [r["status"] for r in Store(out / "store.sqlite").rows()] == ["running"]

    again = subprocess.run(_argv(tiny_bert, data_dir, out, recipe), env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run" in again.stderr
    (resumed,) = Store(out / "store.sqlite").records()
    hws = resumed["extra"]["head_warm_start"]
    assert hws["stage"] == 2 and hws["switch_epoch"] == 1
    if recipe == "ehft_lora":  # stage 2 runs without the LoRA layers: the resumed run had to drop them again
        same = {k: v for k, v in hws.items() if k != "stage1_best_checkpoint"}  # a path under each run's folder
        assert hws["pet_parameters"] > 0 and same == {k: v for k, v in reference["extra"]["head_warm_start"].items()
                                                      if k != "stage1_best_checkpoint"}
    assert resumed["test_metrics"] == pytest.approx(reference["test_metrics"], abs=1e-6)
    assert resumed["best_epoch"] == reference["best_epoch"] and resumed["steps"] == reference["steps"]
