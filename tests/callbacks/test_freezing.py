"""Freezing: selectors, identity-matched param groups, scheduler extension, resume of requires_grad."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, ModelCheckpoint

from helpers import Backbone, Interrupt, Probe, TinyModule, fit, snapshot, trainer_kwargs
from pl_petune.callbacks import CallbackMisuse, Freezing




def test_freeze_backbone_keep_biases_exact_trainable_set(tmp_path):
    model = TinyModule()
    before = snapshot(model)
    probe = Probe()
    fit(model, [Freezing(keep=[{"bias_only": True}]), probe], tmp_path, max_epochs=1)
    expected = {n for n, _ in model.named_parameters() if n.startswith("head.") or n.endswith("bias")}
    assert set(probe.trainable[0]) == expected
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) == (n not in expected) for n in expected | set(before))


def test_top_k_and_layer_ranges(tmp_path):
    model = TinyModule()
    probe = Probe()
    fit(model, [Freezing(top_k=1), probe], tmp_path, max_epochs=1)
    assert set(probe.trainable[0]) == {n for n, _ in model.named_parameters()
                                       if n.startswith("head.") or n.startswith("backbone.layer.2.")}
    model = TinyModule()
    fit(model, [Freezing(freeze=[{"include": [r"^backbone\."], "layers": [0, 1]}, {"module_types": ["Linear"],
                                                                                      "exclude": ["layer", "head"]}]),
                 probe := Probe()], tmp_path, max_epochs=1)
    assert {n for n, _ in model.named_parameters()} - set(probe.trainable[0]) == {
        n for n, _ in model.named_parameters() if n.startswith(("backbone.layer.0.", "backbone.layer.1.",
                                                                 "backbone.embed."))}


def test_zero_initialised_parameter_in_new_group_is_trained(tmp_path):
    model = TinyModule()
    with torch.no_grad():
        model.backbone.layer[2].dense.bias.zero_()  # equal in value to the LayerNorm bias already in the optimizer
    assert torch.equal(model.backbone.layer[2].dense.bias, model.backbone.layer[2].norm.bias)
    freezing = Freezing(freeze=[{"include": [r"layer\.2\.dense\.bias"]}],
                        unfreeze=[{"epoch": 0, "lr": 1e-2}])

    class Check(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            self.groups = len(opt.param_groups)
            self.in_new = any(p is pl_module.backbone.layer[2].dense.bias for p in opt.param_groups[-1]["params"])
            # Lightning's own helper would have dropped it: it compares by value
            self.lightning_keeps = bool(BaseFinetuning.filter_on_optimizer(opt, [pl_module.backbone.layer[2].dense.bias]))

    check = Check()
    fit(model, [freezing, check], tmp_path, max_epochs=1)
    assert check.groups == 2 and check.in_new
    assert not check.lightning_keeps
    assert bool(model.backbone.layer[2].dense.bias.abs().sum() > 0)


def test_new_group_follows_the_schedule(tmp_path):
    # F3: a group added at epoch 1 is scheduled like group 0 (LambdaLR warmup), not left at a constant lr
    model = TinyModule(schedule=True, lr=1e-2)
    freezing = Freezing(unfreeze=[{"epoch": 1, "lr": 4e-3}])
    lrs = []

    class Track(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            groups = trainer.optimizers[0].param_groups
            sched = trainer.lr_scheduler_configs[0].scheduler
            lrs.append((sched.last_epoch, [g["lr"] for g in groups]))

    fit(model, [freezing, Track()], tmp_path, max_epochs=2)
    warm = lambda s: min(1.0, (s + 1) / 4)  # noqa: E731  (TinyModule's schedule)
    for step, group_lrs in lrs:
        assert group_lrs[0] == pytest.approx(1e-2 * warm(step))
        if len(group_lrs) > 1:
            assert group_lrs[1] == pytest.approx(4e-3 * warm(step))
    assert sum(len(g) == 2 for _, g in lrs) == 3  # the 3 steps of epoch 1


def _gradual_run(tmp_path, callbacks=(), ckpt_path=None):
    torch.manual_seed(0)
    model = TinyModule(schedule=True)
    freezing = Freezing(gradual_every=1, gradual_start=1)
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer = fit(model, [freezing, mc, *callbacks], tmp_path, max_epochs=4, ckpt_path=ckpt_path,
                   enable_checkpointing=True)
    return model, trainer


def test_resume_restores_requires_grad_groups_and_optimizer(tmp_path):
    ref, ref_trainer = _gradual_run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="interrupted"):
        _gradual_run(tmp_path / "res", [Interrupt(3)])  # after layers 2 and 1 were unfrozen
    model, trainer = _gradual_run(tmp_path / "res", ckpt_path="last")
    # lightning#21901: the layers unfrozen before the interruption keep training after the resume
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in ref.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    assert len(trainer.optimizers[0].param_groups) == len(ref_trainer.optimizers[0].param_groups) == 4
    ref_opt, opt = ref_trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict()
    assert all(torch.equal(ref_opt["state"][i]["exp_avg_sq"], opt["state"][i]["exp_avg_sq"]) for i in ref_opt["state"])
    assert [g["lr"] for g in opt["param_groups"]] == [g["lr"] for g in ref_opt["param_groups"]]


def test_misuse_names_the_fix(tmp_path):
    with pytest.raises(CallbackMisuse, match=r"Freezing.freeze\[0\]: selection .* matched no parameter"):
        fit(TinyModule(), [Freezing(freeze=[{"include": ["^encoder\\."]}])], tmp_path, max_epochs=1)
    with pytest.raises(CallbackMisuse, match="needs an integer 'epoch'"):
        Freezing(unfreeze=[{"lr": 1e-3}])
    with pytest.raises(CallbackMisuse, match="either Freezing.unfreeze steps or gradual_every"):
        Freezing(unfreeze=[{"epoch": 1}], gradual_every=1)
    with pytest.raises(CallbackMisuse, match="selects no frozen parameter"):
        fit(TinyModule(), [Freezing(unfreeze=[{"epoch": 1, "include": ["^head\\."]}])], tmp_path, max_epochs=1)

    class OneCycle(TinyModule):
        def configure_optimizers(self):
            opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=1e-2, total_steps=100), "interval": "step"}}

    with pytest.raises(CallbackMisuse, match="OneCycleLR"):
        fit(OneCycle(), [Freezing(unfreeze=[{"epoch": 1}])], tmp_path, max_epochs=2)


def test_on_full_finetune(tmp_path, tiny_bert):
    from pl_petune.methods import FullFinetune

    from test_warmstart import _bert_batches

    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-4)
    probe = Probe()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[
        Freezing(top_k=1, unfreeze=[{"epoch": 1, "layers": [0]}]), probe]))
    trainer.fit(model, _bert_batches(), _bert_batches(8, seed=1))
    top = {n for n, _ in model.named_parameters() if n.startswith("backbone.encoder.layer.1.")}
    assert set(probe.trainable[0]) == top | {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert set(probe.trainable[1]) - set(probe.trainable[0]) == {
        n for n, _ in model.named_parameters() if n.startswith("backbone.encoder.layer.0.")}


class BuiltInConfigureModel(TinyModule):
    """A module that builds its backbone in ``configure_model`` (Lightning's hook for large models), idempotently."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        del self.backbone

    def configure_model(self) -> None:
        if not hasattr(self, "backbone"):
            self.backbone = Backbone()


def _lazy_run(tmp_path, callbacks=(), ckpt_path=None):
    torch.manual_seed(0)
    model = BuiltInConfigureModel(schedule=True)
    freezing = Freezing(keep=[{"bias_only": True}], unfreeze=[{"epoch": 2, "include": [r"\.layer\.2\."], "lr": 1e-3}])
    probe = Probe()
    trainer = fit(model, [freezing, probe, ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True), *callbacks],
                  tmp_path, max_epochs=3, ckpt_path=ckpt_path, enable_checkpointing=True)
    return model, trainer, probe


def test_a_backbone_built_in_configure_model_is_frozen_and_unfrozen_on_schedule(tmp_path):
    model, trainer, probe = _lazy_run(tmp_path / "ref")
    names = [n for n, _ in model.named_parameters()]
    first = {n for n in names if n.startswith("head.") or n.endswith(".bias")}
    assert set(probe.trainable[0]) == set(probe.trainable[1]) == first
    assert set(probe.trainable[2]) == first | {n for n in names if n.startswith("backbone.layer.2.")}
    assert all(torch.equal(probe.weights[0][n], probe.weights[1][n]) for n in names if n not in first)
    assert not torch.equal(probe.weights[1]["backbone.layer.2.dense.weight"],
                           probe.weights[2]["backbone.layer.2.dense.weight"])
    assert [g["lr"] for g in trainer.optimizers[0].param_groups][1:] == [pytest.approx(1e-3)]
    # frozen weights never reached the optimizer: configure_optimizers ran after the freeze
    held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {n for n, p in model.named_parameters() if id(p) in held} == set(probe.trainable[2])
    assert "configure_model" not in model.__dict__  # the module's own hook is back

    with pytest.raises(RuntimeError, match="interrupted"):
        _lazy_run(tmp_path / "res", [Interrupt(2)])
    resumed, _, _ = _lazy_run(tmp_path / "res", ckpt_path="last")
    assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
