"""An integer a user typed stays an integer: Lightning reads limit_train_batches 1 as one batch, 1.0 as all."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import pytest

from pl_petune.arg_errors import int_before_float
from pl_petune.cli import main
from pl_petune.lightning_cli import parse_only, run_key_for
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml")]
UNIONS = ["limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches", "gradient_clip_val",
          "val_check_interval"]


@pytest.mark.parametrize("key", UNIONS)
@pytest.mark.parametrize("typed, value", [("1", 1), ("3", 3), ("1.0", 1.0), ("0.5", 0.5), ("1e-1", 0.1)])
def test_trainer_unions_keep_the_type_typed(key, typed, value):
    got = parse_only([*QUICK, f"--trainer.{key}", typed]).fit.trainer[key]
    assert got == value and type(got) is type(value)


def test_a_yaml_integer_stays_an_integer(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text().replace(
        "  max_epochs: 10\n", "  max_epochs: 10\n  limit_train_batches: 1\n  limit_val_batches: 0.5\n"))
    trainer = parse_only(["fit", "--config", str(recipe)]).fit.trainer
    assert type(trainer.limit_train_batches) is int and type(trainer.limit_val_batches) is float


def test_one_batch_and_all_batches_are_two_runs():
    one, all_ = (run_key_for([*QUICK, "--trainer.limit_train_batches", v]) for v in ("1", "1.0"))
    assert one != all_ != run_key_for(QUICK)


def test_limit_train_batches_1_trains_one_batch_per_epoch(tmp_path, tiny_bert, data_dir):
    argv = [*QUICK, "--model.init_args.backbone", tiny_bert, "--data.data_dir", data_dir, "--data.train_limit", "64",
            "--data.max_length", "32", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1",
            "--trainer.enable_progress_bar", "false", "--run.out_dir", str(tmp_path / "runs"),
            "--run.store", str(tmp_path / "s.sqlite")]
    assert main(argv) == 0
    (rec,) = Store(tmp_path / "s.sqlite").records()
    assert rec["steps"] == 2 and rec["hparams"]["trainer.limit_train_batches"] == 1
    assert type(rec["identity"]["trainer.limit_train_batches"]) is int


def test_int_before_float_reorders_every_union_and_nothing_else():
    assert int_before_float(Union[float, int, None]).__args__ == (int, float, type(None))
    assert int_before_float(Optional[list[Union[float, int]]]).__args__[0].__args__[0].__args__ == (int, float)
    assert int_before_float(Literal[1.0, 1]) is Literal[1.0, 1]
    assert int_before_float(Union[int, float]).__args__ == (int, float) and int_before_float(float) is float
