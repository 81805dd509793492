"""`petune fit` end to end on a tiny backbone and real CB: early stopping on dev, one test pass with the
best checkpoint, a complete record in the store; bad input gets one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pl_petune.cli import main
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _fit(tmp_path, tiny_bert, data_dir, *extra):
    store = tmp_path / "store.sqlite"
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"),
            "--model.init_args.backbone", tiny_bert, "--model.init_args.lr", "1e-3",
            "--data.data_dir", data_dir, "--data.train_limit", "64", "--data.max_length", "64",
            "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store), *extra]
    assert main(argv) == 0
    return Store(store)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("fit")
    store = _fit(tmp, tiny_bert, data_dir, "--run.keep_checkpoints", "true")
    return tmp, store


def test_fit_writes_complete_record(fitted):
    tmp, store = fitted
    (rec,) = store.records()
    assert rec["status"] == "complete" and rec["task"] == "cb" and rec["method"] == "finetune"
    assert rec["protocol"] == "train_split" and rec["leaky"] is False
    assert rec["init_seed"] == 1 and rec["data_seed"] == 1 and rec["seed_mode"] == "separate"
    assert rec["test_size"] == 56 and rec["train_size"] == 64 and rec["dev_size"] == 25
    assert 0.0 <= rec["test_metrics"]["test/f1_macro"] <= 1.0 and "test/accuracy" in rec["test_metrics"]
    assert set(rec["dev_metrics"]) >= {"dev/loss", "dev/f1_macro", "dev/accuracy"}
    assert rec["best_dev"] == pytest.approx(rec["dev_metrics"]["dev/loss"])
    assert rec["trainable_params"] > 0 and rec["total_params"] >= rec["trainable_params"] - 10_000
    assert {"torch", "transformers", "lightning", "pl-petune"} <= set(rec["versions"])
    assert rec["git_rev"] and rec["steps"] > 0 and rec["epochs"] >= 1
    assert rec["majority_baseline"]["accuracy"] == pytest.approx(28 / 56) or rec["majority_baseline"]["accuracy"] == pytest.approx(23 / 56)
    on_disk = json.loads((Path(rec["run_dir"]) / "record.json").read_text())
    assert on_disk == rec


def test_tested_weights_are_the_best_checkpoint(fitted, tiny_bert, data_dir):
    """The test metrics equal a manual evaluation of the best-on-dev checkpoint file."""
    import lightning as L

    from pl_petune.data import TaskDataModule
    from pl_petune.methods import FullFinetune

    _, store = fitted
    (rec,) = store.records()
    best = rec["extra"]["best_checkpoint"]
    model = FullFinetune.load_from_checkpoint(best, map_location="cpu", weights_only=False)
    dm = TaskDataModule(task="cb", data_dir=data_dir, tokenizer=tiny_bert, max_length=64, data_seed=1,
                        train_limit=64)
    dm.allow_leaky_test()  # a second look at the held-out split, outside the protocol: asked for explicitly
    out = L.Trainer(logger=False, enable_progress_bar=False).test(model, datamodule=dm, verbose=False)[0]
    assert out["test/f1_macro"] == pytest.approx(rec["test_metrics"]["test/f1_macro"], abs=1e-6)
    import hashlib

    assert hashlib.sha256(Path(best).read_bytes()).hexdigest() == rec["best_checkpoint_sha256"]


def test_same_seeds_same_numbers(fitted, tmp_path, tiny_bert, data_dir):
    """Determinism (CPU): a second run with the same seeds gives identical metrics."""
    _, store = fitted
    (first,) = store.records()
    (second,) = _fit(tmp_path, tiny_bert, data_dir).records()
    assert second["run_key"] == first["run_key"]
    assert second["test_metrics"] == first["test_metrics"] and second["dev_metrics"] == first["dev_metrics"]


def test_a_complete_run_is_not_trained_twice_unless_asked(tmp_path, tiny_bert, data_dir, capsys):
    store = _fit(tmp_path, tiny_bert, data_dir, "--trainer.max_epochs", "1")
    (first,) = store.records()
    capsys.readouterr()
    again = _fit(tmp_path, tiny_bert, data_dir, "--trainer.max_epochs", "1")  # exit 0, nothing trained
    err = capsys.readouterr().err
    assert f"run {first['run_key']} is already complete in {store.path}" in err and "--run.rerun true" in err
    assert again.records() == [first]
    forced = _fit(tmp_path, tiny_bert, data_dir, "--trainer.max_epochs", "1", "--run.rerun", "true")
    (second,) = forced.records()
    assert second["run_key"] == first["run_key"] and second["created_at"] > first["created_at"]
    assert second["test_metrics"] == first["test_metrics"]  # same seeds, same numbers


def test_tied_seed_sets_both(tmp_path, tiny_bert, data_dir):
    (rec,) = _fit(tmp_path, tiny_bert, data_dir, "--run.seed", "1111", "--trainer.max_epochs", "1").records()
    assert rec["init_seed"] == rec["data_seed"] == 1111 and rec["seed_mode"] == "tied"


@pytest.mark.parametrize("args, match", [
    (["--data.task", "cbb"], "unknown task 'cbb'; known: boolq, cb,"),
    (["--data.protocol", "fair"], "unknown protocol 'fair'; known: train_split"),
    (["--model.class_path", "pl_petune.methods.Nope"], "unknown method class 'pl_petune.methods.Nope'; known:"),
    (["--model.init_args.lr", "abc"], "lr.*Expected a <class 'float'>"),
    (["--early_stopping.monitor", "dev/f1"], "'dev/f1' is never logged for task cb; logged: dev/loss"),
    (["--early_stopping.monitor", "test/loss"], "not a development-split metric"),
    (["--data.data_dir", "/nonexistent"], "data dir '/nonexistent' does not exist"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    # options petune fit sets itself are refused, not silently overwritten
    (["--trainer.default_root_dir", "/tmp/elsewhere"], "trainer.default_root_dir '/tmp/elsewhere' is set by petune "
                                                       "fit: each run writes into its run folder"),
    (["--checkpoint.dirpath", "/tmp/ck"], "checkpoint.dirpath '/tmp/ck' is set by petune fit"),
    (["--seed_everything", "5"], "seed_everything 5 is not used by petune fit: data.data_seed seeds"),
    (["--seed_everything", "true"], "seed_everything True is not used by petune fit"),
    (["--seed_everything", "0"], "seed_everything 0 is not used by petune fit"),
    (["--early_stopping.mode", "max"], "early_stopping.mode 'max' contradicts early_stopping.monitor 'dev/loss', "
                                       "which is lower-is-better"),
    (["--checkpoint.mode", "max"], "checkpoint.mode 'max' contradicts"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, tiny_bert, data_dir, args, match):
    import re

    store = tmp_path / "s.sqlite"
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--run.store", str(store), "--run.out_dir", str(tmp_path / "r"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert "Traceback" not in err[0]
    assert not store.exists() or not Store(store).rows(), "nothing may be written for a refused run"


def test_print_config_round_trips(capsys):
    assert main(["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "class_path: pl_petune.methods.FullFinetune" in out and "task: cb" in out


def test_callbacks_are_part_of_the_run_identity():
    """FT and LP-FT differ only by a trainer callback; they must not share a run key (or a run folder)."""
    from pl_petune.lightning_cli import run_key_for

    base = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml")]
    lpft = base + ["--trainer.callbacks+=pl_petune.callbacks.HeadWarmStart",
                   "--trainer.callbacks.stage1_epochs=1"]
    assert run_key_for(base) != run_key_for(lpft)
    assert run_key_for(base) == run_key_for(base + ["--trainer.enable_progress_bar", "false"])


def test_run_key_ignores_options_left_at_their_default():
    """Spelling out a default does not change the key (so a new option with a default keeps old keys)."""
    from pl_petune.lightning_cli import run_key_for

    base = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml")]
    assert run_key_for(base) == run_key_for(base + ["--model.init_args.weight_decay", "0.0"])
    assert run_key_for(base) != run_key_for(base + ["--model.init_args.weight_decay", "0.01"])
    assert run_key_for(base) != run_key_for(base + ["--data.data_seed", "2"])
