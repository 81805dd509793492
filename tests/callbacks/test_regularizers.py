"""Mixout and Child-Tuning_D on a plain LightningModule and on FullFinetune."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import Interrupt, TinyModule, fit, make_data, snapshot, trainer_kwargs
from pl_petune.callbacks import CallbackMisuse, ChildTuningD, Mixout


def _fit(model, callbacks, tmp_path, max_epochs=1, ckpt_path=None, **kw):
    return fit(model, callbacks, tmp_path, max_epochs=max_epochs, ckpt_path=ckpt_path, **kw)


def test_mixout_forward_is_unbiased_and_eval_uses_weights(tmp_path):
    torch.manual_seed(0)
    model = TinyModule(lr=1e-2)
    mix = Mixout(p=0.7)
    _fit(model, [mix], tmp_path)
    lin = model.backbone.layer[0].dense
    assert torch.equal(lin.mixout_target, lin.mixout_target)  # a buffer ...
    assert "backbone.layer.0.dense.mixout_target" not in model.state_dict()  # ... that is not checkpointed
    assert not torch.equal(lin.weight, lin.mixout_target)  # training moved the weight away from W0
    x = torch.randn(4, 16)
    lin.eval()
    assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    lin.train()
    torch.manual_seed(1)
    mean = torch.stack([lin(x) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, torch.nn.functional.linear(x, lin.weight, lin.bias), atol=0.05)
    # one sample mixes: entries equal (W - p W0)/(1-p) where kept, W0 where dropped... so differs from W
    assert not torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    assert mix.record_extra()["mixout"]["layers"] == 5  # embed, 3 dense, head


def test_mixout_pulls_towards_pretrained_more_than_plain_finetuning(tmp_path):
    def drift(callbacks):
        torch.manual_seed(0)
        m = TinyModule(lr=5e-2)
        w0 = snapshot(m)
        _fit(m, callbacks, tmp_path, max_epochs=3)
        return sum(float((m.state_dict()[k] - w0[k]).norm()) for k in w0 if k.endswith("dense.weight"))

    assert drift([Mixout(p=0.9)]) < drift([])


def test_mixout_misuse():
    with pytest.raises(CallbackMisuse, match=r"Mixout.p=1.0 must be in \[0, 1\); EH-FT uses 0.7"):
        Mixout(p=1.0)


def test_mixout_refuses_nothing_matched(tmp_path):
    with pytest.raises(CallbackMisuse, match="matched no nn.Linear.*widen include"):
        _fit(TinyModule(), [Mixout(include=["^encoder"])], tmp_path)


def test_child_tuning_updates_only_the_top_fisher_share(tmp_path):
    torch.manual_seed(0)
    model = TinyModule(lr=1e-2, wd=0.0)  # ChildTuningAdamW decays every weight; without decay masked ones stay
    w0 = snapshot(model)
    ct = ChildTuningD(reserve_p=0.1)
    _fit(model, [ct], tmp_path, max_epochs=2)
    masks = ct.masks
    assert set(masks) == {n for n, _ in model.named_parameters() if n.startswith("backbone.layer.")}
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.1 * total, abs=2)
    after = model.state_dict()
    for n, m in masks.items():
        moved = after[n] != w0[n]
        assert not bool(moved[~m].any()), n  # outside the child network nothing moves
    assert any(bool((after[n] != w0[n])[m].any()) for n, m in masks.items())
    assert not torch.equal(after["backbone.embed.weight"], w0["backbone.embed.weight"])  # not masked: trains
    assert ct.record_extra()["child_tuning_d"]["fisher_batches"] == 3  # one epoch of 48 rows / 16


def test_child_tuning_mask_is_fisher_topk(tmp_path):
    torch.manual_seed(0)
    model = TinyModule()
    ct = ChildTuningD(reserve_p=0.2, max_grad_norm=None)
    ref = TinyModule()
    ref.load_state_dict(model.state_dict())
    train, _ = make_data()
    names = [n for n, _ in ref.named_parameters() if n.startswith("backbone.layer.")]
    fisher = {n: torch.zeros_like(p) for n, p in ref.named_parameters() if n in names}
    for x, y in train:
        ref.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        for n, p in ref.named_parameters():
            if n in fisher:
                fisher[n] += p.grad ** 2
    flat = torch.cat([f.flatten() for f in fisher.values()])
    thr = torch.quantile(flat, 0.8)
    _fit(model, [ct], tmp_path, max_epochs=1)
    agree = sum(int(((fisher[n] >= thr) == ct.masks[n]).sum()) for n in names)
    assert agree >= flat.numel() - 2


def test_child_tuning_resume_keeps_the_mask(tmp_path):
    def run(callbacks, ckpt_path=None):
        torch.manual_seed(0)
        model = TinyModule()
        ct = ChildTuningD(reserve_p=0.1)
        _fit(model, [ct, ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True), *callbacks], tmp_path,
             max_epochs=3, ckpt_path=ckpt_path, enable_checkpointing=True)
        return model, ct

    ref, ref_ct = run([])
    with pytest.raises(RuntimeError):
        run([Interrupt(2)])
    model, ct = run([], ckpt_path="last")
    assert all(torch.equal(ref_ct.masks[n], ct.masks[n]) for n in ref_ct.masks)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))


def test_child_tuning_misuse(tmp_path):
    with pytest.raises(CallbackMisuse, match=r"reserve_p=0 must be in \(0, 1\]; EH-FT uses 0.1"):
        ChildTuningD(reserve_p=0)
    model = TinyModule()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    with pytest.raises(CallbackMisuse, match="no trainable parameter; the backbone must train"):
        _fit(model, [ChildTuningD()], tmp_path)


def test_on_full_finetune(tmp_path, tiny_bert):
    from pl_petune.methods import FullFinetune

    from test_warmstart import _bert_batches

    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-3)
    w0 = snapshot(model)
    ct, mix = ChildTuningD(reserve_p=0.1), Mixout(p=0.7, include=[r"^backbone\."], exclude=["pooler"])
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[ct, mix]))
    trainer.fit(model, _bert_batches(), _bert_batches(8, seed=1))
    assert all(n.startswith("backbone.encoder.layer.") for n in ct.masks) and len(ct.masks) > 10
    after = model.state_dict()
    assert all(not bool((after[n] != w0[n])[~m].any()) for n, m in ct.masks.items())
    assert mix.record_extra()["mixout"]["layers"] == 2 * 6  # q, k, v, o, ffn in, ffn out per layer
