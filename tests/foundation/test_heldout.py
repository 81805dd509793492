"""The held-out guard as a user meets it: a plain Trainer and the petune CLI.

The held-out split is scored once, in trainer.test with the best-on-dev checkpoint of a fit that completed on
the same data module; every other read is refused with HeldOutAccessError (one line from the CLI, exit 2),
unless the user asks for a leaky pass, which is then flagged. See docs/protocol.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from pl_petune.cli import main
from pl_petune.data import HeldOutAccessError, TaskDataModule
from pl_petune.methods import FullFinetune
from pl_petune.recorder import RunRecorder
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")


def _plain(tiny_bert, data_dir, tmp_path, *callbacks, recorder=False, protocol="train_split"):
    dm = TaskDataModule(task="cb", data_dir=data_dir, tokenizer=tiny_bert, max_length=32, train_limit=32,
                        data_seed=5, protocol=protocol)
    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-3, init_seed=5)
    extra = [RunRecorder(out_dir=str(tmp_path / "runs"), store=str(tmp_path / "s.sqlite"))] if recorder else []
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path),
                        callbacks=[ModelCheckpoint(monitor="dev/loss", dirpath=str(tmp_path / "ck"), save_last=True), *extra,
                                   *callbacks])
    return dm, model, trainer


def test_trainer_test_before_any_fit_is_refused(tiny_bert, data_dir, tmp_path):
    dm, model, trainer = _plain(tiny_bert, data_dir, tmp_path)
    with pytest.raises(HeldOutAccessError, match="before any fit completed"):
        trainer.test(model, datamodule=dm, verbose=False)


def test_scored_once_with_the_best_checkpoint_then_refused(tiny_bert, data_dir, tmp_path):
    dm, model, trainer = _plain(tiny_bert, data_dir, tmp_path, recorder=True)
    trainer.fit(model, datamodule=dm)
    with pytest.raises(HeldOutAccessError, match="with checkpoint None; it is scored with the fit's best-on-dev"):
        trainer.test(model, datamodule=dm, verbose=False)  # the last epoch's weights, not the selected ones
    with pytest.raises(HeldOutAccessError, match="last.ckpt'; it is scored with the fit's best-on-dev"):
        trainer.test(model, datamodule=dm, ckpt_path="last", verbose=False)
    (scores,) = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    with pytest.raises(HeldOutAccessError, match="a second time; it is scored once per completed fit"):
        trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    (rec,) = Store(tmp_path / "s.sqlite").records()  # the refused attempts did not fail the run
    assert rec["test_metrics"] == pytest.approx(scores) and rec["leaky"] is False


def test_peeking_during_fit_is_refused_through_every_door(tiny_bert, data_dir, tmp_path):
    seen: list[str] = []

    class Peek(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            dm = trainer.datamodule
            for door in (dm.test_dataloader, lambda: dm.official("dev"), dm.majority_baseline):
                try:
                    door()
                except HeldOutAccessError as err:
                    seen.append(str(err))
            assert len(dm.official("train")) == 250

    dm, model, trainer = _plain(tiny_bert, data_dir, tmp_path, Peek())
    trainer.fit(model, datamodule=dm)
    assert len(seen) == 3 and "during fit" in seen[0] and "through official('dev')" in seen[1]
    assert "held-out labels" in seen[2]


def test_dev_split_protocol_guards_official_dev_too(tiny_bert, data_dir, tmp_path):
    dm, model, trainer = _plain(tiny_bert, data_dir, tmp_path, protocol="dev_split")
    with pytest.raises(HeldOutAccessError, match="official\\('dev'\\)"):
        dm.official("dev")


def test_a_leaky_test_pass_is_flagged_in_the_record(tiny_bert, data_dir, tmp_path):
    dm, model, trainer = _plain(tiny_bert, data_dir, tmp_path, recorder=True)
    trainer.fit(model, datamodule=dm)
    dm.allow_leaky_test()
    trainer.test(model, datamodule=dm, verbose=False)  # the last weights: allowed, since asked for
    (rec,) = Store(tmp_path / "s.sqlite").records()
    assert rec["leaky"] is True and json.loads((Path(rec["run_dir"]) / "record.json").read_text())["leaky"] is True


# ---- the CLI ---------------------------------------------------------------------------------------------
def _common(tiny_bert, data_dir, tmp_path):
    return ["--config", QUICK, "--model.init_args.backbone", tiny_bert, "--data.data_dir", data_dir,
            "--data.train_limit", "32", "--data.max_length", "32", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(tmp_path / "s.sqlite")]


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("kept")
    assert main(["fit", *_common(tiny_bert, data_dir, tmp), "--trainer.max_epochs", "2",
                 "--run.keep_checkpoints", "true"]) == 0
    (rec,) = Store(tmp / "s.sqlite").records()
    return tmp, rec


def test_petune_test_without_a_completed_fit_is_refused_in_one_line(tiny_bert, data_dir, tmp_path):
    """As a user types it, in a fresh process: exit 2, one line, no traceback."""
    argv = [sys.executable, "-m", "pl_petune", "test", *_common(tiny_bert, data_dir, tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("petune test: error: no --ckpt_path was given; petune test scores the held-out")
    assert "--run.allow_leaky_test true" in lines[0] and "test/" not in proc.stdout


def test_petune_test_of_another_checkpoint_is_refused(kept_run, tiny_bert, data_dir, capsys):
    import torch

    tmp, rec = kept_run
    state = torch.load(rec["extra"]["best_checkpoint"], map_location="cpu", weights_only=False)
    other = str(Path(rec["run_dir"]) / "checkpoints" / "other.ckpt")  # other weights in the same run folder
    state["state_dict"] = {k: v + 1 for k, v in state["state_dict"].items()}
    torch.save(state, other)
    for ckpt, needle in ((other, "is not the best-on-dev checkpoint its run"),
                         (str(tmp / "nope.ckpt"), "does not exist")):
        assert main(["test", *_common(tiny_bert, data_dir, tmp), "--ckpt_path", ckpt]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    other_seed = ["--data.data_seed", "9", "--ckpt_path", rec["extra"]["best_checkpoint"]]
    assert main(["test", *_common(tiny_bert, data_dir, tmp), *other_seed]) == 2
    assert "was selected with data_seed 1, this test has 9" in capsys.readouterr().err


def test_petune_test_rescores_the_recorded_best_checkpoint(kept_run, tiny_bert, data_dir, capsys):
    tmp, rec = kept_run
    capsys.readouterr()
    assert main(["test", *_common(tiny_bert, data_dir, tmp), "--ckpt_path", rec["extra"]["best_checkpoint"]]) == 0
    out = capsys.readouterr()
    assert "leaky" not in out.out + out.err and f"{rec['test_metrics']['test/f1_macro']:.4f}"[:5] in out.out


def test_petune_test_leaky_when_asked_says_so(kept_run, tiny_bert, data_dir, capsys):
    tmp, rec = kept_run
    last = str(Path(rec["run_dir"]) / "checkpoints" / "last.ckpt")
    assert main(["test", *_common(tiny_bert, data_dir, tmp), "--ckpt_path", last,
                 "--run.allow_leaky_test", "true"]) == 0
    out = capsys.readouterr()
    assert "petune test: leaky:" in out.err and "petune test: leaky: the scores above are not held-out" in out.out
    assert Store(tmp / "s.sqlite").records() == [rec]  # nothing recorded over the complete run


def test_fit_refuses_allow_leaky_test(tiny_bert, data_dir, tmp_path, capsys):
    assert main(["fit", *_common(tiny_bert, data_dir, tmp_path), "--run.allow_leaky_test", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.allow_leaky_test is for petune test" in err[0]
    assert not (tmp_path / "s.sqlite").exists()
