"""RunRecorder in a plain Lightning Trainer (no CLI): the run folder, record.json and the store row."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from pl_petune.data import TaskDataModule
from pl_petune.methods import FullFinetune
from pl_petune.recorder import RunRecorder
from pl_petune.store import Store


def _parts(tiny_bert, data_dir, tmp_path, *callbacks, max_epochs=2):
    dm = TaskDataModule(task="cb", data_dir=data_dir, tokenizer=tiny_bert, max_length=48, train_limit=32,
                        data_seed=3)
    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-3, init_seed=3)
    recorder = RunRecorder(out_dir=str(tmp_path / "runs"), store=str(tmp_path / "store.sqlite"))
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path),
                        callbacks=[ModelCheckpoint(monitor="dev/loss", dirpath=str(tmp_path / "ckpt")), recorder,
                                   *callbacks])
    return dm, model, recorder, trainer


def test_plain_trainer_gets_a_complete_record(tiny_bert, data_dir, tmp_path):
    dm, model, recorder, trainer = _parts(tiny_bert, data_dir, tmp_path)
    trainer.fit(model, datamodule=dm)
    running = json.loads((recorder.run_dir / "record.json").read_text())
    assert running["status"] == "running" and set(recorder.history) == {0, 1}
    (scores,) = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    (rec,) = Store(tmp_path / "store.sqlite").records()
    assert rec == json.loads((Path(rec["run_dir"]) / "record.json").read_text())
    assert rec["status"] == "complete" and rec["task"] == "cb" and rec["method"] == "finetune"
    assert Path(rec["run_dir"]) == tmp_path / "runs" / "cb" / "finetune" / rec["run_key"]
    assert rec["test_metrics"] == pytest.approx(scores) and rec["init_seed"] == 3 and rec["data_seed"] == 3
    assert rec["extra"]["best_checkpoint"] == trainer.checkpoint_callback.best_model_path
    assert rec["dev_metrics"] == recorder.history[rec["best_epoch"]]
    assert rec["best_dev"] == pytest.approx(rec["dev_metrics"]["dev/loss"])
    assert rec["identity"]["model.init_args.lr"] == 1e-3 and rec["identity"]["data.train_limit"] == 32


def test_same_plain_run_same_key_other_seed_other_key(tiny_bert, data_dir, tmp_path):
    keys = []
    for seed in (3, 3, 4):
        dm, model, recorder, trainer = _parts(tiny_bert, data_dir, tmp_path / str(len(keys)), max_epochs=1)
        dm.data_seed = seed
        trainer.fit(model, datamodule=dm)
        keys.append(recorder.run_key)
    assert keys[0] == keys[1] != keys[2]


def test_an_exception_in_fit_marks_the_run_failed(tiny_bert, data_dir, tmp_path):
    class Boom(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise RuntimeError("disk on fire")

    dm, model, recorder, trainer = _parts(tiny_bert, data_dir, tmp_path, Boom())
    with pytest.raises(RuntimeError, match="disk on fire"):
        trainer.fit(model, datamodule=dm)
    (row,) = Store(tmp_path / "store.sqlite").rows()
    assert row["status"] == "failed" and "RuntimeError: disk on fire" in row["error"]
    on_disk = json.loads((recorder.run_dir / "record.json").read_text())
    assert on_disk["status"] == "failed" and "disk on fire" in on_disk["error"]


def test_a_bad_data_module_is_refused_before_anything_is_written(tiny_bert, tmp_path):
    from torch.utils.data import DataLoader

    from pl_petune.errors import ConfigError

    class Plain(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader([])

    model = FullFinetune(task="cb", backbone=tiny_bert)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                        callbacks=[RunRecorder(out_dir=str(tmp_path / "runs"), store=str(tmp_path / "s.sqlite"))])
    with pytest.raises(ConfigError, match="RunRecorder records pl_petune runs"):
        trainer.fit(model, datamodule=Plain())
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.sqlite").exists()
