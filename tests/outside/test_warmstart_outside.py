"""HeadWarmStart in an outside project (its own modules, plain Lightning): issue 14 items 1, 2, 5, 10, resume
mid-stage, and the EH-FT(BitFit) head-bias seed (issue 13 item 8)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from outside_models import MLP, PeftSeqCls, Seen, Stop, data, pretrained_weights, token_batches, trainer
from pl_petune.callbacks import CallbackMisuse
from pl_petune.callbacks import HeadWarmStart as _HeadWarmStart
from torch import nn


def HeadWarmStart(**kw):  # noqa: N802  (the outside MLP names its parts encoder and fc)
    return _HeadWarmStart(**{"backbone_attr": "encoder", "head_attr": "fc", **kw})


def _ehft(root, hws, epochs=4, callbacks=(), ckpt_path=None, **module):
    torch.manual_seed(0)
    model = MLP(pet=True, **module)
    train, dev = data()
    mc = ModelCheckpoint(dirpath=root / "ck", save_last=True)
    t = trainer(root, max_epochs=epochs, callbacks=[hws, *callbacks, mc], enable_checkpointing=True)
    t.fit(model, train, dev, ckpt_path=ckpt_path)
    return model, root / "ck" / "last.ckpt"


def _test_loss(model, loader) -> float:
    model.eval()
    with torch.no_grad():
        return float(sum(nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in loader)
                     / sum(len(y) for _, y in loader))


@pytest.mark.parametrize("spelling", [dict(stage1_epochs=0.5), dict(), dict(stage1_epochs=3, stage1_lr=1.0)])
def test_stage2_checkpoint_is_tested_with_its_own_weights_however_hws_is_spelt(tmp_path, spelling):
    """Item 1: the state is found under any spelling; the loaded weights are the checkpoint's, never a silent
    non-strict load that leaves an untrained model."""
    trained, last = _ehft(tmp_path, HeadWarmStart(stage1_epochs=2, stage1_lr=1e-2))
    _, dev = data()
    ckpt = torch.load(last, weights_only=False)
    fresh = MLP(pet=True)
    res = trainer(tmp_path / "eval", callbacks=[HeadWarmStart(**spelling)]).test(fresh, dev, ckpt_path=str(last))
    assert not fresh.pet_parameter_names()
    assert fresh.state_dict().keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
    assert res[0]["test_loss"] == pytest.approx(_test_loss(trained, dev), rel=1e-5)


def test_checkpoint_without_findable_state_is_refused_not_loaded_silently(tmp_path):
    _, last = _ehft(tmp_path, HeadWarmStart(stage1_epochs=2))
    ckpt = torch.load(last, weights_only=False)
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if not str(k).startswith("HeadWarmStart")}
    torch.save(ckpt, tmp_path / "stripped.ckpt")
    _, dev = data()
    with pytest.raises(CallbackMisuse, match=r"^HeadWarmStart: the checkpoint holds no HeadWarmStart state") as err:
        trainer(tmp_path / "eval", callbacks=[HeadWarmStart()]).test(MLP(pet=True), dev,
                                                                    ckpt_path=str(tmp_path / "stripped.ckpt"))
    assert "\n" not in str(err.value)
    # a weights-only stage-2 checkpoint (no callback states): its tree tells the stage, then a strict load
    weights_only = {"state_dict": ckpt["state_dict"], "pytorch-lightning_version": ckpt["pytorch-lightning_version"],
                    "epoch": ckpt["epoch"], "global_step": ckpt["global_step"], "loops": ckpt["loops"]}
    torch.save(weights_only, tmp_path / "weights.ckpt")
    fresh = MLP(pet=True)
    trainer(tmp_path / "eval2", callbacks=[HeadWarmStart()]).test(fresh, dev, ckpt_path=str(tmp_path / "weights.ckpt"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ckpt["state_dict"].items())


@pytest.mark.parametrize("stop_at", [1, 3])  # mid stage 1, mid stage 2
def test_resume_mid_stage_with_another_spelling_ends_like_an_uninterrupted_run(tmp_path, stop_at):
    """Item 2 and resume mid-stage: stage1_epochs=2 and 0.5 of max_epochs=4 are one plan."""
    ref, _ = _ehft(tmp_path / "ref", HeadWarmStart(stage1_epochs=2, stage1_lr=1e-2))
    with pytest.raises(RuntimeError, match="stopped"):
        _ehft(tmp_path / "res", HeadWarmStart(stage1_epochs=2, stage1_lr=1e-2), callbacks=[Stop(stop_at)])
    hws = HeadWarmStart(stage1_epochs=0.5, stage1_lr=1e-2)
    model, _ = _ehft(tmp_path / "res", hws, ckpt_path=str(tmp_path / "res" / "ck" / "last.ckpt"))
    assert hws.stage == 2 and hws.record_extra()["head_warm_start"]["switch_epoch"] == 2
    assert hws.record_extra()["head_warm_start"]["pet_parameters"] == 6  # as recorded by an uninterrupted run
    assert ref.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref.state_dict().items())


def test_resume_with_another_plan_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="stopped"):
        _ehft(tmp_path, HeadWarmStart(stage1_epochs=2), callbacks=[Stop(3)])
    with pytest.raises(CallbackMisuse, match="plan is 2 stage-1 epochs of 4, this run plans 1 of 4"):
        _ehft(tmp_path, HeadWarmStart(stage1_epochs=1), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))


@pytest.mark.parametrize("load_in", ["setup", "configure_model"])
def test_pretrained_snapshot_is_taken_after_the_module_loads_its_weights(tmp_path, load_in):
    """Item 5: a module that loads its pretrained weights in setup()/configure_model() gets those back."""
    seen = Seen()
    model, _ = _ehft(tmp_path, HeadWarmStart(stage1_epochs=1, stage1_lr=1e-2), epochs=2, callbacks=[seen],
                     load_in=load_in)
    pretrained = pretrained_weights()
    at_switch = {k[len("encoder."):]: v for k, v in seen.start[1].items() if k.startswith("encoder.")}
    assert at_switch.keys() == pretrained.keys()
    assert all(torch.equal(at_switch[k], v) for k, v in pretrained.items())


def test_peft_seq_cls_wrapper_is_followed_through_the_drop(tmp_path):
    """Item 10: with PEFT's task_type="SEQ_CLS" the paths change at unload(); backbone and head are followed."""
    model = PeftSeqCls()
    bert = model.model.base_model.model.bert
    pretrained = {n.replace(".base_layer.", "."): p.detach().clone() for n, p in bert.named_parameters()
                  if "lora_" not in n}
    seen = Seen()
    hws = _HeadWarmStart(stage1_epochs=1, stage1_lr=1e-2, backbone_attr="model.base_model.model.bert",
                        head_attr="model.base_model.model.classifier")
    trainer(tmp_path, max_epochs=2, callbacks=[hws, seen]).fit(model, token_batches(), token_batches(8, seed=1))
    assert hws.stage == 2 and not model.pet_parameter_names()
    at = seen.start[1]
    backbone = {k[len("model.bert."):]: v for k, v in at.items() if k.startswith("model.bert.")}
    assert backbone.keys() == pretrained.keys()
    assert all(torch.equal(backbone[k], v) for k, v in pretrained.items())
    trained_head = "model.base_model.model.classifier.modules_to_save.default."
    assert not torch.equal(seen.end[0][trained_head + "weight"], seen.start[0][trained_head + "weight"])
    for leaf in ("weight", "bias"):
        assert torch.equal(at["model.classifier." + leaf], seen.end[0][trained_head + leaf])
    assert set(seen.trainable[1]) == {n for n, _ in model.named_parameters()}


def _bitfit_bias(tmp_path, seed, init_seed=None):
    L.seed_everything(seed)
    model = MLP()
    if init_seed is not None:
        model.init_seed = init_seed
    hws = HeadWarmStart(stage1_epochs=1, keep_head_bias=False, stage1_params={"include": [r"^encoder\."],
                                                                           "bias_only": True})
    seen = Seen()
    train, dev = data()
    trainer(tmp_path, max_epochs=2, callbacks=[hws, seen]).fit(model, train, dev)
    return seen.start[1]["fc.bias"], hws.record_extra()["head_warm_start"]


def test_bitfit_head_bias_is_drawn_under_each_run_s_seed(tmp_path):
    """Issue 13 item 8: no fixed head_bias_seed=0; the run's seed (seed_everything) draws the new biases."""
    b1, rec1 = _bitfit_bias(tmp_path / "a", 1)
    b1_again, _ = _bitfit_bias(tmp_path / "b", 1)
    b2, rec2 = _bitfit_bias(tmp_path / "c", 2)
    assert torch.equal(b1, b1_again) and not torch.equal(b1, b2)
    assert rec1["head_bias_seed"] == 1 and rec2["head_bias_seed"] == 2
    bound = 1.0 / (12 ** 0.5)
    expected = torch.rand(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 * bound - bound
    assert torch.equal(b2, expected.float())


def test_head_bias_follows_a_module_s_init_seed_not_the_data_seed(tmp_path):
    """With separate seeds (a module declaring ``init_seed``), the new head biases are new parameters: they
    follow the weight-init seed, and changing the seed given to seed_everything (data order) leaves them."""
    b_a, rec = _bitfit_bias(tmp_path / "a", 1, init_seed=7)
    b_b, _ = _bitfit_bias(tmp_path / "b", 2, init_seed=7)
    b_c, _ = _bitfit_bias(tmp_path / "c", 1, init_seed=8)
    assert rec["head_bias_seed"] == 7
    assert torch.equal(b_a, b_b) and not torch.equal(b_a, b_c)


def test_lbfgs_probe_defaults_are_kumar_s_sweep():
    """Issue 13 item 9: 50 values of C over logspace(-7, 2), 20 L-BFGS iterations each (Kumar et al.)."""
    hws = HeadWarmStart(solver="lbfgs")
    assert len(hws.cs) == 50 and hws.cs[0] == pytest.approx(1e-7) and hws.cs[-1] == pytest.approx(100.0)
    assert hws.lbfgs_max_iter == 20


def test_two_instances_and_a_weights_only_resume_are_refused(tmp_path):
    train, dev = data()
    with pytest.raises(CallbackMisuse, match="^HeadWarmStart: the Trainer holds two HeadWarmStart callbacks"):
        trainer(tmp_path, callbacks=[HeadWarmStart(), HeadWarmStart(solver="lbfgs")]).fit(MLP(pet=True), train, dev)
    _, last = _ehft(tmp_path, HeadWarmStart(stage1_epochs=1), epochs=2)
    ckpt = torch.load(last, weights_only=False)
    torch.save({k: ckpt[k] for k in ("state_dict", "pytorch-lightning_version", "epoch", "global_step", "loops")},
               tmp_path / "weights.ckpt")
    with pytest.raises(CallbackMisuse, match="cannot resume fit from .*weights-only checkpoint"):
        _ehft(tmp_path / "again", HeadWarmStart(stage1_epochs=1), epochs=3, ckpt_path=str(tmp_path / "weights.ckpt"))


def test_a_drop_that_loses_the_head_is_refused_naming_the_fix(tmp_path):
    class LosesHead(MLP):
        def drop_pet_layers(self):
            super().drop_pet_layers()
            self.fc = nn.Linear(self.fc.in_features, self.fc.out_features)
            del self.fc

    train, dev = data()
    with pytest.raises(CallbackMisuse, match="after drop_pet_layers\\(\\) the head is gone"):
        trainer(tmp_path, max_epochs=2, callbacks=[HeadWarmStart(stage1_epochs=1)]).fit(LosesHead(pet=True), train, dev)


def test_other_callbacks_are_reset_only_through_their_public_state(tmp_path):
    """Issue 16: at the switch, early stopping and checkpointing get their fit-start state through
    load_state_dict (a callback that guards its attributes still works), so stage 2 selects on its own."""
    from lightning.pytorch.callbacks import EarlyStopping

    class Guarded(EarlyStopping):
        loads: list[dict] = []

        def load_state_dict(self, state_dict):
            Guarded.loads.append(dict(state_dict))
            super().load_state_dict(state_dict)

    es = Guarded(monitor="val_loss", patience=50)
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=1)
    train, dev = data()
    hws = HeadWarmStart(stage1_epochs=2, stage1_lr=1e-2)
    trainer(tmp_path, max_epochs=3, callbacks=[hws, es, mc], enable_checkpointing=True).fit(MLP(pet=True), train, dev)
    assert len(Guarded.loads) == 1 and Guarded.loads[0]["wait_count"] == 0
    assert float(Guarded.loads[0]["best_score"]) == float("inf")
    rec = hws.record_extra()["head_warm_start"]
    assert rec["stage1_best_checkpoint"] and rec["stage1_best_checkpoint"] != mc.best_model_path
    assert "epoch=2" in mc.best_model_path  # stage 2's only epoch is its best, whatever stage 1 scored
