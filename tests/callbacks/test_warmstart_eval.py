"""`petune test` of an EH-FT checkpoint in a new process: the stage-2 checkpoint lacks the PET layers the recipe
builds, so HeadWarmStart drops them before the weights load, and the held-out numbers equal the fit's own."""

from __future__ import annotations

import re
from pathlib import Path

from pl_petune.packaged import config_args
import pytest

from pl_petune.cli import main
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", ["ehft_lora", "ehft_prefix"])
def test_petune_test_reloads_a_stage_two_checkpoint(recipe, tmp_path, tiny_bert, data_dir, capsys):
    common = [*config_args(str(ROOT / "recipes" / "methods" / f"{recipe}.yaml")),
              "--model.init_args.backbone", tiny_bert, "--data.data_dir", data_dir, "--data.train_limit", "48",
              "--data.max_length", "32", "--trainer.enable_progress_bar", "false"]
    assert main(["fit", *common, "--trainer.max_epochs", "3", "--run.keep_checkpoints", "true",
                 "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(tmp_path / "s.sqlite")]) == 0
    (rec,) = Store(tmp_path / "s.sqlite").records()
    assert rec["extra"]["head_warm_start"]["stage"] == 2
    best = rec["extra"]["best_checkpoint"]
    capsys.readouterr()

    assert main(["test", *common, "--ckpt_path", best, "--run.out_dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    printed = {k: float(v) for k, v in re.findall(r"(test/\w+)\s*[│|]?\s*([0-9.]+(?:e-?\d+)?)", out)}
    assert printed.keys() == rec["test_metrics"].keys()
    assert printed == pytest.approx(rec["test_metrics"], abs=1e-6)
    assert (tmp_path / "runs" / "eval").is_dir()  # logs under run.out_dir, not ./lightning_logs
