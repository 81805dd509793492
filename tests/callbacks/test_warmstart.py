"""HeadWarmStart (LP-FT / EH-FT) on plain Lightning modules and on pl_petune's FullFinetune."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from helpers import Interrupt, Probe, TinyLoRAModule, TinyModule, make_data, snapshot, trainer_kwargs
from pl_petune.callbacks import CallbackMisuse, HeadWarmStart


class AtSwitch(L.Callback):
    """Placed after HeadWarmStart: captures the module right after the switch, before any stage-2 step."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.state, self.trainable, self.lr = epoch, None, None, None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            self.state = snapshot(pl_module)
            self.trainable = [n for n, p in pl_module.named_parameters() if p.requires_grad]
            self.lr = [g["lr"] for g in trainer.optimizers[0].param_groups]
            self.opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            self.param_ids = {id(p) for p in pl_module.parameters() if p.requires_grad}


def _fit(model, callbacks, tmp_path, max_epochs=4, ckpt_path=None, **kw):
    train, dev = make_data()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=max_epochs, callbacks=callbacks, **kw))
    trainer.fit(model, train, dev, ckpt_path=ckpt_path)
    return trainer


def _unlora(name: str) -> str:
    return name.replace(".dense.base.", ".dense.")


def test_ehft_lora_switch_restores_backbone_drops_pet_keeps_head(tmp_path):
    torch.manual_seed(0)
    model = TinyLoRAModule()
    pretrained = {_unlora(k): v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    probe, at = Probe(), AtSwitch(epoch=2)
    hws = HeadWarmStart(stage1_epochs=2, stage1_lr=5e-3, stage2_lr=1e-3)
    _fit(model, [hws, at, probe], tmp_path, max_epochs=4)
    # stage 1 trained head + LoRA only
    assert set(probe.trainable[0]) == {n for n, _ in model.named_parameters() if n.startswith("head.")} | {
        n for n in probe.weights[0] if "lora_" in n}
    assert any(not torch.equal(probe.weights[1][k], probe.weights[0][k]) for k in probe.weights[0] if "lora_B" in k)
    # at the switch: PET gone, backbone pretrained bit for bit, head = stage-1 head
    assert not any("lora_" in k for k in at.state)
    backbone_now = {k[len("backbone."):]: v for k, v in at.state.items() if k.startswith("backbone.")}
    assert backbone_now.keys() == pretrained.keys()
    assert all(torch.equal(backbone_now[k], pretrained[k]) for k in pretrained)
    for k in ("head.weight", "head.bias"):
        assert torch.equal(at.state[k], probe.weights[1][k])
    # stage 2: the whole backbone and the head train, from a fresh optimizer whose warmup restarts at 0
    assert set(at.trainable) == {n for n, _ in model.named_parameters()}
    assert at.opt_ids == at.param_ids
    assert at.lr == [0.0]
    assert not torch.equal(model.backbone.layer[0].dense.weight, pretrained["layer.0.dense.weight"])
    rec = hws.record_extra()["head_warm_start"]
    assert rec["stage"] == 2 and rec["switch_epoch"] == 2 and rec["solver"] == "adamw"
    assert rec["stage_plan"]["stage1"]["epochs"] == 2 and rec["stage_plan"]["stage2"]["epochs"] == 2
    assert rec["pet_parameters"] == 6


def test_reserve_keeps_pet_parameters_trained(tmp_path):
    torch.manual_seed(0)
    model = TinyLoRAModule()
    probe, at = Probe(), AtSwitch(epoch=1)
    _fit(model, [HeadWarmStart(stage1_epochs=1, stage1_lr=5e-3, reserve=True), at, probe], tmp_path, max_epochs=2)
    lora = [k for k in probe.weights[0] if "lora_B" in k]
    assert lora and all(torch.equal(at.state[k], probe.weights[0][k]) for k in lora)
    assert any(bool(at.state[k].abs().sum() > 0) for k in lora)  # trained in stage 1, not reset
    assert {n for n in at.trainable if "lora_" in n} == {n for n in probe.weights[0] if "lora_" in n}


def test_ehft_bitfit_restores_biases_and_weight_only_head(tmp_path):
    torch.manual_seed(0)
    model = TinyModule()
    pretrained = snapshot(model.backbone)
    probe, at = Probe(), AtSwitch(epoch=1)
    hws = HeadWarmStart(stage1_epochs=0.5, stage1_lr=5e-3, keep_head_bias=False,
                        stage1_params={"include": [r"^backbone\."], "bias_only": True})
    _fit(model, [hws, at, probe], tmp_path, max_epochs=2)
    stage1 = set(probe.trainable[0])
    assert stage1 == {"head.weight", "head.bias"} | {n for n, _ in model.named_parameters()
                                                       if n.startswith("backbone.") and n.endswith("bias")}
    assert not torch.equal(probe.weights[0]["backbone.embed.bias"], pretrained["embed.bias"])  # BitFit trained it
    assert all(torch.equal(at.state["backbone." + k], v) for k, v in pretrained.items())  # restored
    assert torch.equal(at.state["head.weight"], probe.weights[0]["head.weight"])
    assert not torch.equal(at.state["head.bias"], probe.weights[0]["head.bias"])  # EH-FT BitFit parity
    bound = 1 / np.sqrt(16)
    assert bool((at.state["head.bias"].abs() <= bound).all())
    assert set(at.trainable) == {n for n, _ in model.named_parameters()}  # the module's initial set


def test_zero_epoch_bug_guard_fraction_floors_to_at_least_one(tmp_path):
    hws = HeadWarmStart(stage1_epochs=0.1)
    model = TinyModule()
    _fit(model, [hws], tmp_path, max_epochs=3)
    assert hws.record_extra()["head_warm_start"]["stage_plan"]["stage1"]["epochs"] == 1


def _resume_run(tmp_path, interrupt_epoch):
    cks = tmp_path / "ckpt"

    def run(callbacks, ckpt_path=None):
        torch.manual_seed(0)
        model = TinyLoRAModule(schedule=True)
        hws = HeadWarmStart(stage1_epochs=2, stage1_lr=5e-3, stage2_lr=1e-3)
        mc = ModelCheckpoint(dirpath=cks, monitor="val_loss", save_last=True)
        es = EarlyStopping(monitor="val_loss", patience=50)
        trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=5, callbacks=[hws, mc, es, *callbacks],
                                             enable_checkpointing=True))
        train, dev = make_data()
        trainer.fit(model, train, dev, ckpt_path=ckpt_path)
        return model, trainer, hws

    with pytest.raises(RuntimeError, match="interrupted"):
        run([Interrupt(interrupt_epoch)])
    return run([], ckpt_path="last")


@pytest.mark.parametrize("interrupt_epoch", [1, 3], ids=["in-stage-1", "in-stage-2"])
def test_resume_continues_the_right_stage(tmp_path, interrupt_epoch):
    ref_model, ref_trainer, ref_hws = _resume_run_reference(tmp_path / "ref")
    model, trainer, hws = _resume_run(tmp_path / "resumed", interrupt_epoch)
    assert hws.stage == 2 and hws.record_extra()["head_warm_start"]["switch_epoch"] == 2
    ref_state, state = ref_model.state_dict(), model.state_dict()
    assert ref_state.keys() == state.keys() and not any("lora_" in k for k in state)
    assert all(torch.equal(ref_state[k], state[k]) for k in state)
    assert float(trainer.callback_metrics["val_loss"]) == float(ref_trainer.callback_metrics["val_loss"])
    ref_opt, opt = ref_trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict()
    assert all(torch.equal(ref_opt["state"][i]["exp_avg"], opt["state"][i]["exp_avg"]) for i in opt["state"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, p in ref_model.named_parameters() if p.requires_grad]
    assert float(trainer.checkpoint_callback.best_model_score) == float(ref_trainer.checkpoint_callback.best_model_score)


def _resume_run_reference(tmp_path):
    torch.manual_seed(0)
    model = TinyLoRAModule(schedule=True)
    hws = HeadWarmStart(stage1_epochs=2, stage1_lr=5e-3, stage2_lr=1e-3)
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    es = EarlyStopping(monitor="val_loss", patience=50)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=5, callbacks=[hws, mc, es], enable_checkpointing=True))
    train, dev = make_data()
    trainer.fit(model, train, dev)
    return model, trainer, hws


def test_stage2_selects_its_own_best_even_if_worse_than_stage1(tmp_path):
    # F6: a huge stage-2 lr makes every stage-2 dev loss worse than stage 1's best
    model = TinyModule()
    hws = HeadWarmStart(stage1_epochs=2, stage1_lr=1e-2, stage2_lr=5.0, warmup_ratio=0.0)
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", filename="best-{epoch}")
    es = EarlyStopping(monitor="val_loss", patience=1)
    trainer = _fit(model, [hws, mc, es], tmp_path, max_epochs=6, enable_checkpointing=True)
    rec = hws.record_extra()["head_warm_start"]
    assert rec["stage1_best_checkpoint"] and "epoch=" in rec["stage1_best_checkpoint"]
    best_epoch = int(mc.best_model_path.rsplit("epoch=", 1)[1].split(".")[0])
    assert best_epoch >= 2  # stage 2's own best, never stage 1's
    assert trainer.current_epoch >= 3  # early stopping did not end fit in stage 1


def test_early_stopping_cannot_end_stage_one(tmp_path):
    model = TinyModule()
    hws = HeadWarmStart(stage1_epochs=3, stage1_lr=50.0, warmup_ratio=0.0)  # diverges in stage 1
    es = EarlyStopping(monitor="val_loss", patience=1)
    _fit(model, [hws, es], tmp_path, max_epochs=6)
    assert hws.stage == 2


def test_lbfgs_probe_equals_sklearn_on_the_same_features(tmp_path):
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    model = TinyModule()
    at = AtSwitch(epoch=0)
    hws = HeadWarmStart(solver="lbfgs", stage2_lr=1e-3, cs=[1e-3, 1e-2, 1.0], lbfgs_max_iter=5000)
    _fit(model, [hws, at], tmp_path, max_epochs=1)
    info = hws.record_extra()["head_warm_start"]
    assert info["solver"] == "lbfgs" and info["lbfgs"]["C"] in (1e-3, 1e-2, 1.0)
    assert info["stage_plan"]["stage1"]["epochs"] == 0 and info["switch_epoch"] == 0
    train, dev = make_data()
    x = torch.cat([b[0] for b in train]); y = torch.cat([b[1] for b in train])
    fresh = TinyModule()
    fresh.load_state_dict({k: v for k, v in at.state.items()})
    with torch.no_grad():
        feats = fresh.backbone(x).double().numpy()
        logits = fresh.head(fresh.backbone(x)).double()
    m, s = feats.mean(), feats.std()
    clf = LogisticRegression(C=info["lbfgs"]["C"], max_iter=5000, tol=1e-8).fit((feats - m) / s, y.numpy())
    margin = logits[:, 1] - logits[:, 0]
    np.testing.assert_allclose(margin.numpy(), clf.decision_function((feats - m) / s), rtol=1e-3, atol=2e-3)
    assert set(at.trainable) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("kwargs,match", [
    ({"stage1_epochs": 1.5}, "out of range.*fraction"),
    ({"stage1_epochs": 0.0}, "out of range"),
    ({"stage1_epochs": -1}, "out of range"),
    ({"solver": "lbfgs", "stage1_epochs": 2}, "remove stage1_epochs"),
    ({"solver": "newton"}, "unknown; use 'adamw' or 'lbfgs'"),
    ({"stage1_lr": 0}, "stage1_lr must be > 0"),
    ({"stage1_params": {"includes": ["x"]}}, r"stage1_params: unknown key\(s\) \['includes'\]; allowed: include"),
])
def test_misuse_refused_at_construction(kwargs, match):
    with pytest.raises(CallbackMisuse, match=match):
        HeadWarmStart(**kwargs)


def test_misuse_refused_at_setup(tmp_path):
    with pytest.raises(CallbackMisuse, match="head_attr='classifier': TinyModule has no attribute 'classifier'.*set HeadWarmStart.head_attr"):
        _fit(TinyModule(), [HeadWarmStart(head_attr="classifier")], tmp_path)
    with pytest.raises(CallbackMisuse, match="backbone_attr='encoder': TinyModule has no attribute 'encoder'.*set HeadWarmStart.backbone_attr"):
        _fit(TinyModule(), [HeadWarmStart(backbone_attr="encoder")], tmp_path)
    with pytest.raises(CallbackMisuse, match="leaving none for stage 2; lower stage1_epochs or raise max_epochs"):
        _fit(TinyModule(), [HeadWarmStart(stage1_epochs=4)], tmp_path, max_epochs=4)

    class NoDrop(TinyLoRAModule):
        drop_pet_layers = None

    with pytest.raises(CallbackMisuse, match="no drop_pet_layers.*reserve=True"):
        _fit(NoDrop(), [HeadWarmStart(stage1_epochs=1)], tmp_path)


# ---- pl_petune's own module ----------------------------------------------------------------------------
def _bert_batches(n=24, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(0, n, 8):
        ids = torch.randint(1000, 2000, (8, 12), generator=g)
        ids[:, 0] = 101
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "labels": (ids[:, 1] % classes).long()})
    return torch.utils.data.DataLoader(rows, batch_size=None)


@pytest.mark.parametrize("solver", ["adamw", "lbfgs"])
def test_lpft_on_full_finetune(tmp_path, tiny_bert, solver):
    from pl_petune.methods import FullFinetune

    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-4, head="linear", init_seed=1)
    initial = [n for n, p in model.named_parameters() if p.requires_grad]
    pretrained = snapshot(model.backbone)
    probe, at = Probe(), AtSwitch(epoch=1 if solver == "adamw" else 0)
    hws = HeadWarmStart(stage1_epochs=1 if solver == "adamw" else None, solver=solver, stage1_lr=1e-3,
                        cs=[0.1, 10.0])
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[hws, at, probe]))
    trainer.fit(model, _bert_batches(), _bert_batches(16, seed=1))
    if solver == "adamw":
        assert set(probe.trainable[0]) == {n for n, _ in model.named_parameters() if n.startswith("head.")}
        assert torch.equal(at.state["head.net.1.weight"], probe.weights[0]["head.net.1.weight"])
    assert all(torch.equal(at.state["backbone." + k], v) for k, v in pretrained.items())
    assert at.trainable == initial  # stage 2 = the module's own set (pooler stays frozen)
    assert trainer.optimizers[0].__class__.__name__ == "AdamW"
    info = hws.record_extra()["head_warm_start"]
    assert info["solver"] == solver and info["stage"] == 2


# ---- with pl_petune's PET methods (the pet_parameter_names / drop_pet_layers contract) ------------------
@pytest.mark.parametrize("method,kwargs", [("LoRA", {"r": 4, "targets": ["q", "k", "v", "o"]}),
                                           ("PrefixTuning", {"prefix_length": 4})])
def test_ehft_with_pet_methods(tmp_path, tiny_bert, method, kwargs):
    import pl_petune.methods as methods

    cls = getattr(methods, method)
    model = cls(task="cb", backbone=tiny_bert, lr=1e-4, init_seed=1, **kwargs)
    pet = model.pet_parameter_names()
    assert pet
    pet_ids = {id(p) for n, p in model.named_parameters() if n in set(pet)}
    # LoRA (PEFT) keeps the base tensors under ``base_layer``; the adapters methods rebuild a plain backbone
    base = {n.replace(".base_layer.", "."): p.detach().clone() for n, p in model.backbone.named_parameters()
            if "backbone." + n not in pet}
    probe, at = Probe(), AtSwitch(epoch=1)
    hws = HeadWarmStart(stage1_epochs=1, stage1_lr=5e-3,
                        stage2_params={"include": [r"^backbone\.", r"^head\."], "exclude": [r"\.pooler\."]})
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[hws, at, probe]))
    trainer.fit(model, _bert_batches(), _bert_batches(8, seed=1))
    assert set(probe.trainable[0]) == set(pet) | {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert not any(id(p) in pet_ids for p in model.parameters())  # PET layers gone
    assert not model.pet_parameter_names()
    # every backbone parameter at the switch is its pretrained value bit for bit (before stage 2 trains)
    params_now = {n for n, _ in model.backbone.named_parameters()}
    at_backbone = {k[len("backbone."):]: v for k, v in at.state.items() if k[len("backbone."):] in params_now}
    assert at_backbone.keys() == base.keys()
    assert all(torch.equal(at_backbone[k], base[k]) for k in base)
    head = {k: v for k, v in at.state.items() if k.startswith("head.")}
    assert all(torch.equal(v, probe.weights[0][k]) for k, v in head.items())
    assert set(at.trainable) == {n for n, _ in model.named_parameters() if ".pooler." not in n}


def _bitfit_run(tmp_path, callbacks=(), ckpt_path=None):
    """EH-FT(BitFit) on TinyModule: stage 1 trains backbone biases, so a stage-1 checkpoint must carry their
    pretrained values for the switch to restore them."""
    torch.manual_seed(0)
    model = TinyModule()
    hws = HeadWarmStart(stage1_epochs=2, stage1_lr=5e-3, stage2_lr=1e-3,
                        stage1_params={"include": [r"^backbone\."], "bias_only": True})
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=4, callbacks=[hws, mc, *callbacks],
                                         enable_checkpointing=True))
    train, dev = make_data()
    trainer.fit(model, train, dev, ckpt_path=ckpt_path)
    return model


def _rewrite_warmstart_state(path, edit):
    ckpt = torch.load(path, weights_only=False)
    (key,) = [k for k in ckpt["callbacks"] if str(k).startswith("HeadWarmStart")]
    edit(ckpt["callbacks"][key])
    torch.save(ckpt, path)


def test_stage1_checkpoint_of_the_older_key_still_resumes(tmp_path):
    """The stage-1 pretrained values were saved as ``pretrained_volatile`` before the rename: such a checkpoint
    resumes to the same weights as an uninterrupted run."""
    reference = _bitfit_run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="interrupted"):
        _bitfit_run(tmp_path / "old", [Interrupt(1)])
    last = tmp_path / "old" / "ckpt" / "last.ckpt"
    _rewrite_warmstart_state(last, lambda state: state.update(pretrained_volatile=state.pop("pretrained_changeable")))
    resumed = _bitfit_run(tmp_path / "old", ckpt_path=str(last))
    ref_state, state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)


def test_stage1_checkpoint_without_pretrained_values_is_refused(tmp_path):
    """Without them the switch would "restore" stage-1-trained biases as pretrained: refused, named."""
    with pytest.raises(RuntimeError, match="interrupted"):
        _bitfit_run(tmp_path, [Interrupt(1)])
    last = tmp_path / "ckpt" / "last.ckpt"
    _rewrite_warmstart_state(last, lambda state: state.pop("pretrained_changeable"))
    with pytest.raises(CallbackMisuse, match="holds no pretrained values.*'pretrained_changeable'"):
        _bitfit_run(tmp_path, ckpt_path=str(last))
