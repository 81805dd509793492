"""DevSplitEarlyStopping: dev-only selection, best weights restored, one test pass, carve, misuse."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from helpers import TinyModule, make_data, snapshot, trainer_kwargs
from pl_petune.callbacks import CallbackMisuse, DevSplitEarlyStopping, HeldOutTooEarly


class ModuleWithTest(TinyModule):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))


class LastEpochWorse(L.Callback):
    """Ruins the weights in the last epoch, so the last weights are worse than the best ones."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.head.weight.mul_(-3.0)


def test_best_weights_restored_and_tested_once(tmp_path):
    torch.manual_seed(0)
    model = ModuleWithTest(lr=5e-2)
    stop = DevSplitEarlyStopping(monitor="val_loss", patience=5)
    seen = {}

    class Keep(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen[trainer.current_epoch] = (float(trainer.callback_metrics["val_loss"]), snapshot(pl_module))

    train, dev = make_data()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=4, callbacks=[stop, Keep(), LastEpochWorse(3)]))
    with pytest.raises(HeldOutTooEarly, match="before fit ended.*run trainer.fit first"):
        trainer.test(model, dev)
    trainer.fit(model, train, dev)
    best_epoch = min(seen, key=lambda e: seen[e][0])
    assert best_epoch != 3 and stop.best_epoch == best_epoch
    assert all(torch.equal(v, seen[best_epoch][1][k]) for k, v in model.state_dict().items())  # restored
    res = stop.test_best(trainer, model, dataloaders=dev)
    with torch.no_grad():
        manual = float(sum(nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in dev) / 16)
    assert res[0]["test_loss"] == pytest.approx(manual, rel=1e-5)
    with pytest.raises(HeldOutTooEarly, match="already evaluated once"):
        trainer.test(model, dev)
    rec = stop.record_extra()["dev_split_early_stopping"]
    assert rec["best_epoch"] == best_epoch and rec["tested"] and len(rec["best_checkpoint_sha256"]) == 64


def test_carves_a_dev_split_when_none_is_given(tmp_path):
    torch.manual_seed(0)
    model = TinyModule()
    stop = DevSplitEarlyStopping(monitor="val_loss", dev_fraction=0.25, carve_seed=3)
    train, _ = make_data()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[stop]))
    trainer.fit(model, train)
    carved = stop.record_extra()["dev_split_early_stopping"]["carved"]
    assert carved == {"train": 36, "dev": 12, "seed": 3}
    assert trainer.num_val_batches == [1] and trainer.num_training_batches == 3
    assert "val_loss" in trainer.callback_metrics


def test_misuse(tmp_path):
    train, dev = make_data()
    with pytest.raises(CallbackMisuse, match="no development split.*dev_fraction=0.1"):
        L.Trainer(**trainer_kwargs(tmp_path, callbacks=[DevSplitEarlyStopping("val_loss")])).fit(TinyModule(), train)
    with pytest.raises(CallbackMisuse, match="monitor 'val_acc' is not logged; logged: .*val_loss.*set monitor="):
        L.Trainer(**trainer_kwargs(tmp_path, callbacks=[DevSplitEarlyStopping(monitor="val_acc")])).fit(
            TinyModule(), train, dev)
    with pytest.raises(CallbackMisuse, match="dev_fraction=1.5 is out of range"):
        DevSplitEarlyStopping("val_loss", dev_fraction=1.5)


def test_leaky_protocol_allows_testing_any_time(tmp_path):
    _, dev = make_data()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, callbacks=[DevSplitEarlyStopping("val_loss", leaky=True)]))
    trainer.test(ModuleWithTest(), dev)
    trainer.test(ModuleWithTest(), dev)


def test_on_full_finetune(tmp_path, tiny_bert):
    from pl_petune.methods import FullFinetune

    from test_warmstart import _bert_batches

    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-3)
    stop = DevSplitEarlyStopping(monitor="dev/loss", patience=2)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[stop]))
    trainer.fit(model, _bert_batches(), _bert_batches(8, seed=1))
    res = stop.test_best(trainer, model, dataloaders=_bert_batches(8, seed=2))
    assert "test/loss" in res[0] and stop.best_epoch in (0, 1)
