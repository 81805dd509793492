"""DevSplitEarlyStopping in an outside project: issue 14 items 3 (one best checkpoint per run and instance) and 4
(the user's DataLoader kept intact, or refused), and ``monitor`` required as in Lightning's EarlyStopping."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from outside_models import MLP, data, trainer
from pl_petune.callbacks import CallbackMisuse, DevSplitEarlyStopping
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Subset, TensorDataset, WeightedRandomSampler


class Ruin(L.Callback):
    """Makes the last epoch's weights worse than the best, so the best checkpoint matters."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                pl_module.fc.weight.mul_(-5.0)


def _run(root, seed, **kw):
    torch.manual_seed(seed)
    model = MLP()
    stop = DevSplitEarlyStopping("val_loss", patience=10, **kw)
    train, dev = data(seed=seed)
    t = trainer(root, max_epochs=3, callbacks=[stop, Ruin()])
    t.fit(model, train, dev)
    return model, stop, t


def test_two_runs_in_a_loop_keep_their_own_best_checkpoint(tmp_path):
    """Item 3: the same default_root_dir twice; test_best of the first run still tests the first run's weights."""
    m1, s1, t1 = _run(tmp_path, 1)
    best1 = {k: v.clone() for k, v in m1.state_dict().items()}
    m2, s2, _ = _run(tmp_path, 2)
    assert s1.best_model_path != s2.best_model_path
    assert os.path.dirname(s1.best_model_path) == os.path.join(str(tmp_path), "dev_best")
    on_disk = torch.load(s1.best_model_path, weights_only=False)["state_dict"]
    assert all(torch.equal(on_disk[k], v) for k, v in best1.items())
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "dev_best").iterdir())  # atomic: no temp left

    class Check(MLP):
        def on_test_start(self):
            self.loaded = {k: v.clone() for k, v in self.state_dict().items()}

    probe = Check()
    s1.test_best(t1, probe, dataloaders=data(seed=1)[1])
    assert all(torch.equal(probe.loaded[k], v) for k, v in best1.items())


def test_two_instances_in_one_trainer_save_apart(tmp_path):
    torch.manual_seed(0)
    loss, acc = DevSplitEarlyStopping("val_loss", patience=10), DevSplitEarlyStopping("val_acc", mode="max", patience=10)
    train, dev = data()
    trainer(tmp_path, max_epochs=3, callbacks=[loss, acc]).fit(MLP(), train, dev)
    assert loss.best_model_path != acc.best_model_path
    assert os.path.isfile(loss.best_model_path) and os.path.isfile(acc.best_model_path)
    assert "val_loss-min" in os.path.basename(loss.best_model_path)
    assert "val_acc-max" in os.path.basename(acc.best_model_path)


def test_monitor_is_required():
    with pytest.raises(TypeError, match="monitor"):
        DevSplitEarlyStopping()  # type: ignore[call-arg]


def _dataset(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


class Loaders(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.train, self.dev = trainer.train_dataloader, trainer.val_dataloaders


def _carve(tmp_path, loader, **kw):
    stop, seen = DevSplitEarlyStopping("val_loss", dev_fraction=0.25, carve_seed=3, **kw), Loaders()
    trainer(tmp_path, max_epochs=1, callbacks=[stop, seen]).fit(MLP(), loader)
    return stop, seen


def _seed_worker(worker_id: int) -> None:
    pass


def test_carve_keeps_the_loader_s_settings_and_generator(tmp_path):
    """Item 4: a shuffled loader with its generator, pin_memory, worker_init_fn, drop_last: all kept."""
    ds = _dataset()
    loader = DataLoader(ds, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(11), drop_last=True,
                        pin_memory=False, worker_init_fn=_seed_worker, timeout=0)
    stop, seen = _carve(tmp_path, loader)
    train = seen.train
    assert isinstance(train.dataset, Subset) and train.dataset.dataset is ds and len(train.dataset) == 30
    assert train.batch_size == 7 and train.drop_last and train.worker_init_fn is _seed_worker
    assert isinstance(train.sampler, RandomSampler) and train.sampler.generator is loader.sampler.generator
    assert len(seen.dev.dataset) == 10 and not seen.dev.drop_last
    assert sorted(train.dataset.indices + seen.dev.dataset.indices) == list(range(40))


def test_carve_keeps_a_batch_sampler(tmp_path):
    ds = _dataset()
    gen = torch.Generator().manual_seed(5)
    loader = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds, generator=gen), 8, drop_last=False))
    _, seen = _carve(tmp_path, loader)
    bs = seen.train.batch_sampler
    assert isinstance(bs, BatchSampler) and bs.batch_size == 8 and not bs.drop_last
    assert isinstance(bs.sampler, RandomSampler) and bs.sampler.generator is gen
    assert len(bs.sampler.data_source) == 30


@pytest.mark.parametrize("make,match", [
    (lambda ds: DataLoader(ds, batch_size=8, sampler=WeightedRandomSampler([1.0] * 40, 40)),
     "sampler is WeightedRandomSampler"),
    (lambda ds: DataLoader(ds, batch_sampler=[[0, 1], [2, 3]]), "custom batch_sampler"),
    (lambda ds: type("MyLoader", (DataLoader,), {})(ds, batch_size=8), "cannot carve a MyLoader"),
])
def test_carve_refuses_a_loader_it_cannot_keep_intact(tmp_path, make, match):
    with pytest.raises(CallbackMisuse, match=f"^DevSplitEarlyStopping.dev_fraction: .*{match}") as err:
        _carve(tmp_path, make(_dataset()))
    assert "\n" not in str(err.value)
