"""Freezing (and the misuse errors of every callback) in an outside project: issue 14 items 6, 7, 8, 11, 12 and
one way to name the backbone across Freezing, ChildTuningD and HeadWarmStart."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from outside_models import MLP, Seen, Stop, data, trainer
from pl_petune.callbacks import (
    CallbackMisuse,
    ChildTuningD,
    DevSplitEarlyStopping,
    Freezing,
    HeadWarmStart,
    Mixout,
    ParamSelector,
    SaveHeadFeatures,
)


def _fit(root, callbacks, epochs=3, ckpt_path=None, **module):
    torch.manual_seed(0)
    model = MLP(**module)
    train, dev = data()
    t = trainer(root, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=True)
    t.fit(model, train, dev, ckpt_path=ckpt_path)
    return model, t


class StepCount(L.Callback):
    steps = 0

    def on_train_batch_end(self, *args):
        StepCount.steps += 1


def test_onecycle_is_refused_at_fit_start_before_any_step(tmp_path):
    """Item 6: not after training epochs, when the unfreeze epoch comes."""
    StepCount.steps = 0
    with pytest.raises(CallbackMisuse, match="^Freezing adds a param group mid-fit, which OneCycleLR cannot"):
        _fit(tmp_path, [Freezing(backbone_attr="encoder", unfreeze=[{"epoch": 2}]), StepCount()], scheduler="onecycle")
    assert StepCount.steps == 0


def test_unfreeze_lr_applies_when_the_optimizer_already_holds_every_parameter(tmp_path):
    """Item 7: configure_optimizers takes all parameters; the step's lr is not silently ignored."""
    seen = Seen()
    model, t = _fit(tmp_path, [Freezing(backbone_attr="encoder", unfreeze=[{"epoch": 1, "lr": 1e-4}]), seen],
                    epochs=2, optimize_all=True)
    opt = t.optimizers[0]
    groups = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(groups[id(p)] == pytest.approx(1e-4) for p in model.encoder.parameters())
    assert all(groups[id(p)] == pytest.approx(1e-2) for p in model.fc.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))  # each exactly once
    # AdamW's first steps move a parameter by about lr: the encoder moves by ~1e-4, not ~1e-2
    moved = max(float((seen.end[1][k] - seen.start[1][k]).abs().max()) for k in seen.start[1] if k.startswith("encoder."))
    assert 0 < moved < 1e-3


def test_gradual_unfreezing_reaches_parameters_without_a_layer_index(tmp_path):
    """Item 8: the pooler goes with the top layer, the embedding after layer 0."""
    seen = Seen()
    _fit(tmp_path, [Freezing(backbone_attr="encoder", gradual_every=1, gradual_start=1), seen], epochs=5)
    newly = {e: set(seen.trainable[e]) - set(seen.trainable[e - 1]) for e in range(1, 5)}
    assert newly[1] == {"encoder.layers.2.weight", "encoder.layers.2.bias", "encoder.pooler.weight",
                        "encoder.pooler.bias"}
    assert newly[3] == {"encoder.layers.0.weight", "encoder.layers.0.bias"}
    assert newly[4] == {"encoder.embed.weight", "encoder.embed.bias"}
    assert set(seen.trainable[4]) == {n for n, _ in MLP().named_parameters()}


def test_instances_differing_only_in_schedule_keep_their_own_state(tmp_path):
    """Item 12: two Freezing instances that differ only in the schedule have two state keys, and a resume
    restores each."""
    a = Freezing(freeze=[{"include": [r"^encoder\.layers\.0\."]}], unfreeze=[{"epoch": 1}])
    b = Freezing(freeze=[{"include": [r"^encoder\.layers\.0\."]}], unfreeze=[{"epoch": 2}])
    assert a.state_key != b.state_key
    g1 = Freezing(backbone_attr="encoder", gradual_every=1)
    g2 = Freezing(backbone_attr="encoder", gradual_every=2)
    assert g1.state_key != g2.state_key

    def run(root, stop=(), ckpt=None):
        first = Freezing(freeze=[{"include": [r"^encoder\.layers\.0\."]}], unfreeze=[{"epoch": 1, "lr": 1e-3}])
        second = Freezing(freeze=[{"include": [r"^encoder\.layers\.1\."]}], unfreeze=[{"epoch": 2, "lr": 2e-3}])
        mc = ModelCheckpoint(dirpath=root / "ck", save_last=True)
        return _fit(root, [first, second, *stop, mc], epochs=4, ckpt_path=ckpt)

    ref, ref_t = run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="stopped"):
        run(tmp_path / "res", stop=[Stop(3)])
    model, t = run(tmp_path / "res", ckpt=str(tmp_path / "res" / "ck" / "last.ckpt"))
    assert [g["lr"] for g in t.optimizers[0].param_groups] == [g["lr"] for g in ref_t.optimizers[0].param_groups]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("build,match", [
    (lambda: Freezing(freeze=[{"include": ["(unclosed"]}]), r"^Freezing.freeze\[0\]: bad parameter pattern '\(unclosed'"),
    (lambda: Freezing(keep=[{"exclude": ["[a-"]}]), r"^Freezing.keep\[0\]: bad parameter pattern"),
    (lambda: Freezing(unfreeze=[{"epoch": 1, "lrr": 1e-3}]),
     r"^Freezing.unfreeze\[0\]: unknown key\(s\) \['lrr'\]; allowed: epoch, lr, include, module_types"),
    (lambda: Freezing(unfreeze=[{"epoch": 1, "lr": -1}]), r"^Freezing.unfreeze\[0\].lr=-1 must be a number > 0"),
    (lambda: Freezing(freeze=[{"layer_pattern": "layer"}]), r"^Freezing.freeze\[0\]: layer_pattern 'layer' must have"),
    (lambda: HeadWarmStart(stage1_params={"include": ["*x"]}), r"^HeadWarmStart.stage1_params: bad parameter pattern"),
    (lambda: HeadWarmStart(stage2_params={"bias": True}), r"^HeadWarmStart.stage2_params: unknown key\(s\) \['bias'\]"),
    (lambda: ChildTuningD(params={"include": "^encoder"}), r"^ChildTuningD.params: include must be a list"),
    (lambda: ChildTuningD(clip_mode="global"), r"^ChildTuningD.clip_mode='global' is unknown; use 'per_tensor'"),
    (lambda: Mixout(include=["(x"]), r"^Mixout.include: bad regex '\(x'"),
    (lambda: Mixout(p=1.0), r"^Mixout.p=1.0 must be in \[0, 1\)"),
    (lambda: DevSplitEarlyStopping("val_loss", dev_fraction=2), r"^DevSplitEarlyStopping.dev_fraction=2 is out of range"),
    (lambda: SaveHeadFeatures(splits=["test"]), r"^SaveHeadFeatures.splits \['test'\] is invalid; choose from: train, dev"),
])
def test_misuse_is_one_callback_misuse_line_at_construction(build, match):
    """Item 11: refused in __init__, one line naming the callback, the argument, the value and what is allowed."""
    with pytest.raises(CallbackMisuse, match=match) as err:
        build()
    assert "\n" not in str(err.value)


def test_selection_errors_at_setup_name_callback_and_argument(tmp_path):
    """Item 11: a selector that matches nothing is a CallbackMisuse naming the callback and argument."""
    with pytest.raises(CallbackMisuse, match=r"^Freezing.freeze\[0\]: selection \(include=\['\^backbone'\]\) matched no"):
        _fit(tmp_path, [Freezing(freeze=[{"include": ["^backbone"]}])], epochs=1)
    with pytest.raises(CallbackMisuse, match=r"^Freezing.unfreeze\[0\]: selection .* matched no parameter"):
        _fit(tmp_path, [Freezing(backbone_attr="encoder", unfreeze=[{"epoch": 1, "include": ["^nope"]}])], epochs=1)
    with pytest.raises(CallbackMisuse, match=r"^HeadWarmStart.stage2_params: selection .* matched no parameter"):
        _fit(tmp_path, [HeadWarmStart(backbone_attr="encoder", head_attr="fc", stage1_epochs=1,
                                      stage2_params={"include": ["^nope"]})], epochs=2)
    with pytest.raises(CallbackMisuse, match=r"^Freezing.backbone_attr='backbone': MLP has no attribute 'backbone' "
                                             r"\(its children: encoder, fc\)"):
        _fit(tmp_path, [Freezing()], epochs=1)
    with pytest.raises(CallbackMisuse, match=r"^ChildTuningD.backbone_attr='backbone': MLP has no attribute"):
        _fit(tmp_path, [ChildTuningD()], epochs=1)


def test_one_way_to_name_the_backbone(tmp_path):
    """Also: Freezing, ChildTuningD and HeadWarmStart all take backbone_attr (no hard-coded ^backbone\\.)."""
    seen = Seen()
    _fit(tmp_path / "f", [Freezing(backbone_attr="encoder"), seen], epochs=1)
    assert set(seen.trainable[0]) == {"fc.weight", "fc.bias"}
    ct = ChildTuningD(backbone_attr="encoder", reserve_p=0.5)
    _fit(tmp_path / "c", [ct], epochs=1)
    assert set(ct.masks) == {f"encoder.layers.{i}.{leaf}" for i in range(3) for leaf in ("weight", "bias")}
    hws, seen = HeadWarmStart(backbone_attr="encoder", head_attr="fc", stage1_epochs=1), Seen()
    _fit(tmp_path / "h", [hws, seen], epochs=2)
    assert set(seen.trainable[0]) == {"fc.weight", "fc.bias"}
    assert ParamSelector(include=[r"^encoder\."]).resolve(MLP())[0] == "encoder.embed.weight"


def test_a_single_selector_or_step_is_taken_as_a_list_and_a_bad_one_refused(tmp_path):
    seen = Seen()
    _fit(tmp_path, [Freezing(freeze={"include": [r"^encoder\."]}, unfreeze={"epoch": 1}), seen], epochs=2)
    assert set(seen.trainable[0]) == {"fc.weight", "fc.bias"}
    assert set(seen.trainable[1]) == {n for n, _ in MLP().named_parameters()}
    with pytest.raises(CallbackMisuse, match=r"^Freezing.unfreeze\[0\]=2 must be a mapping"):
        Freezing(unfreeze=[2])
    with pytest.raises(CallbackMisuse, match=r"^Freezing.freeze='\^encoder' must be a list of selectors"):
        Freezing(freeze="^encoder")


def test_child_tuning_state_key_holds_its_clipping():
    assert ChildTuningD(clip_mode="joint").state_key != ChildTuningD().state_key
    assert ChildTuningD(max_grad_norm=0.5).state_key != ChildTuningD().state_key
