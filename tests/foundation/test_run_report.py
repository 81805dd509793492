"""What a run reports about itself: why and when it stopped, and the trivial baseline of a regression task."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pl_petune.cli import main
from pl_petune.record_build import stop_fields, summary_line
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _fit(tmp_path, tiny_bert, data_dir, *extra, task_args=("--data.train_limit", "32")):
    store = tmp_path / "s.sqlite"
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, *task_args, "--data.max_length", "32",
            "--trainer.enable_progress_bar", "false", "--run.out_dir", str(tmp_path / "runs"),
            "--run.store", str(store), *extra]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    return rec


@pytest.mark.parametrize("extra, reason, stop_epoch, epochs, early", [
    # epoch 0 already under the threshold: early stopped in epoch 0 (recorded as False before)
    (["--early_stopping.stopping_threshold", "100", "--trainer.max_epochs", "3"], "stopping_threshold", 0, 1, True),
    (["--early_stopping.divergence_threshold", "0.0001", "--trainer.max_epochs", "3"], "divergence_threshold", 0, 1,
     True),
    # no epoch after the first improves by 100: patience 1 runs out in epoch 1 of 4
    (["--early_stopping.min_delta", "100", "--early_stopping.patience", "1", "--trainer.max_epochs", "4"],
     "patience", 1, 2, True),
    (["--trainer.max_epochs", "2", "--early_stopping.patience", "10"], "max_epochs", 1, 2, False),
])
def test_the_record_says_why_and_when_fit_stopped(tmp_path, tiny_bert, data_dir, capsys, extra, reason, stop_epoch,
                                                  epochs, early):
    rec = _fit(tmp_path, tiny_bert, data_dir, *extra)
    assert (rec["stop_reason"], rec["stop_epoch"], rec["epochs"], rec["early_stopped"]) == (reason, stop_epoch,
                                                                                          epochs, early)
    assert f"stopped by {reason} in epoch {stop_epoch}" in capsys.readouterr().out


@pytest.mark.parametrize("es, kw, reason, epoch", [
    (("non_finite", 3, "dev/loss = nan"), {}, "non_finite", 3),
    (None, {"max_steps": 40, "steps": 40}, "max_steps", 4),
    (None, {"out_of_time": True}, "max_time", 4),
    (None, {"should_stop": True}, "stopped_by_callback", 4),
    (None, {"epochs": 0}, "not_stopped", None),
])
def test_stop_fields_name_every_reason(es, kw, reason, epoch):
    args = {"epochs": 5, "max_epochs": 10, "steps": 10, "max_steps": -1, "out_of_time": False, "should_stop": False,
            **kw}
    got = stop_fields(es, **args)
    assert got["stop_reason"] == reason and got["stop_epoch"] == epoch and got["early_stopped"] is (es is not None)


def _stsb(root: Path, n_train: int = 60, n_dev: int = 20) -> str:
    d = root / "glue" / "STS-B"
    d.mkdir(parents=True)
    rng = random.Random(0)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [f"{i}\tmain\tf\t2012\t{i}\ts\ts\ta man plays {i}\ta man sings {i % 7}\t{rng.uniform(0, 5):.3f}"
                for i in range(n)]
        (d / name).write_text(head + "\n".join(rows) + "\n")
    return str(root)


def test_regression_gets_the_train_mean_baseline(tmp_path, tiny_bert):
    import csv

    import numpy as np

    data = _stsb(tmp_path / "data")
    rec = _fit(tmp_path, tiny_bert, data, "--data.task", "stsb", "--early_stopping.monitor", "dev/loss",
               "--trainer.max_epochs", "1", task_args=())
    read = lambda f: np.array([float(r["score"]) for r in csv.DictReader(  # noqa: E731
        open(Path(data) / "glue" / "STS-B" / f), delimiter="\t", quoting=csv.QUOTE_NONE)])
    train, test = read("train.tsv"), read("dev.tsv")
    base = rec["mean_baseline"]
    # the train part is 90 % of train.tsv (the rest is dev): its mean, not the whole file's
    assert base["pearson"] is None and base["spearman"] is None and rec["majority_baseline"] is None
    assert base["mse"] == pytest.approx(float(np.mean((test - base["prediction"]) ** 2)))
    from pl_petune.data import TaskDataModule

    _, idx = TaskDataModule(task="stsb", data_dir=data, tokenizer=tiny_bert, data_seed=1).split().parts["train"]
    assert base["prediction"] == pytest.approx(float(train[idx].mean())) != pytest.approx(float(train.mean()))
    line = summary_line(rec)
    assert "train-mean constant baseline: MSE = " in line and "its pearson and spearman undefined" in line
