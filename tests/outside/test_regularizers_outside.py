"""Mixout, ChildTuningD, SaveHeadFeatures and the shared inference loop in an outside project: issue 14 items 5
(Mixout's targets) and 9 (Hugging Face SDPA attention dropout), issue 13 item 7 (per-tensor clipping)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from outside_models import MLP, Stop, data, pretrained_weights, tiny_bert_cls, token_batches, trainer
from pl_petune.callbacks import ChildTuningD, Mixout, SaveHeadFeatures
from pl_petune.callbacks._inference import infer
from torch import nn


def _mixout_run(root, load_in, stop=(), ckpt=None):
    torch.manual_seed(0)
    model = MLP(load_in=load_in)
    mix = Mixout(p=0.5, include=[r"^encoder\.layers\."])
    train, dev = data()
    mc = ModelCheckpoint(dirpath=root / "ck", save_last=True)
    trainer(root, max_epochs=3, callbacks=[mix, *stop, mc], enable_checkpointing=True).fit(model, train, dev,
                                                                                          ckpt_path=ckpt)
    return model


@pytest.mark.parametrize("load_in", ["setup", "configure_model"])
def test_mixout_targets_are_the_weights_the_module_loads(tmp_path, load_in):
    """Item 5: targets are taken after the module's setup()/configure_model(), also on a resume (not the
    trained weights the checkpoint holds)."""
    pretrained = pretrained_weights()
    model = _mixout_run(tmp_path / "a", load_in)
    for i, layer in enumerate(model.encoder.layers):
        assert torch.equal(layer.mixout_target, pretrained[f"layers.{i}.weight"])
        assert not torch.equal(layer.weight, layer.mixout_target)
    with pytest.raises(RuntimeError, match="stopped"):
        _mixout_run(tmp_path / "b", load_in, stop=[Stop(2)])
    resumed = _mixout_run(tmp_path / "b", load_in, ckpt=str(tmp_path / "b" / "ck" / "last.ckpt"))
    for i, layer in enumerate(resumed.encoder.layers):
        assert torch.equal(layer.mixout_target, pretrained[f"layers.{i}.weight"])


class HFModule(L.LightningModule):
    def __init__(self, attn: str) -> None:
        super().__init__()
        self.model = tiny_bert_cls(attn=attn, attention_dropout=0.5, hidden_dropout=0.5)

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mixout_disable_dropout_reaches_hf_attention_dropout(tmp_path, attn):
    """Item 9: SDPA attention reads a config float, not an nn.Dropout; with every dropout off and p=0, a
    training-mode forward is deterministic."""
    module = HFModule(attn)
    mix = Mixout(p=0.0, disable_dropout=True)
    trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[mix]).fit(module, token_batches())
    batch = next(iter(token_batches()))
    module.train()
    with torch.no_grad():
        a, b = module.model(**batch).logits, module.model(**batch).logits
    assert torch.equal(a, b)
    assert mix.record_extra()["mixout"]["dropout_turned_off"]


def test_mixout_without_the_callback_the_same_check_fails(tmp_path):
    """The check above can fail: the same model keeps dropout on without disable_dropout."""
    module = HFModule("sdpa")
    module.train()
    batch = next(iter(token_batches()))
    with torch.no_grad():
        assert not torch.equal(module.model(**batch).logits, module.model(**batch).logits)


def _fisher(model, loader, clip, mode):
    names = [n for n, _ in model.named_parameters() if n.startswith("encoder.layers.")]
    table = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(table[n]) for n in names}
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [table[n] for n in names])
        norms = [g.norm() for g in grads]
        if mode == "joint":
            norms = [torch.stack(norms).norm()] * len(grads)
        for n, g, nrm in zip(names, grads, norms):
            fisher[n] += (g * min(1.0, clip / (float(nrm) + 1e-6))) ** 2
    return fisher


@pytest.mark.parametrize("mode", ["per_tensor", "joint"])
def test_child_tuning_clips_as_the_reference(tmp_path, mode):
    """Issue 13 item 7: EH-FT clips each parameter tensor's gradient (clip_grad_norm_ per tensor); the default
    is the reference's, 'joint' is the other option; the masks differ between the two."""
    torch.manual_seed(0)
    model = MLP(lr=0.0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ct = ChildTuningD(reserve_p=0.3, backbone_attr="encoder", max_grad_norm=0.05,
                      **({} if mode == "per_tensor" else {"clip_mode": mode}))
    train, dev = data()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[ct]).fit(model, train, dev)
    reference = MLP()
    reference.load_state_dict(initial)
    reference.train()
    fisher = _fisher(reference, train, 0.05, mode)
    flat = torch.cat([f.flatten() for f in fisher.values()])
    threshold = torch.topk(flat, int(np.ceil(0.3 * flat.numel()))).values.min()
    assert all(torch.equal(ct.masks[n], fisher[n] >= threshold) for n in fisher)
    other = _fisher(reference, train, 0.05, "joint" if mode == "per_tensor" else "per_tensor")
    flat_o = torch.cat([f.flatten() for f in other.values()])
    th_o = torch.topk(flat_o, int(np.ceil(0.3 * flat_o.numel()))).values.min()
    assert any(not torch.equal(ct.masks[n], other[n] >= th_o) for n in other)


def test_save_head_features_on_a_plain_trainer(tmp_path):
    """SaveHeadFeatures is exported and works without a datamodule: after fit and test in one Trainer."""
    torch.manual_seed(0)
    model = MLP()
    train, dev = data()
    save = SaveHeadFeatures(head_attr="fc", limit=None)
    t = trainer(tmp_path, max_epochs=1, callbacks=[save])
    t.fit(model, train, dev)
    t.test(model, dev)
    got = np.load(tmp_path / "features.npz")
    model.eval()
    with torch.no_grad():
        x = torch.cat([b[0] for b in dev])
        expected = model.encoder(x).numpy()
    np.testing.assert_allclose(got["dev_features"], expected, rtol=1e-6, atol=1e-6)
    assert got["train_features"].shape == (45, 12) and got["train_labels"].shape == (45,)


def test_infer_captures_what_the_head_read_and_restores_the_mode():
    model = MLP()
    model.train()
    _, dev = data()
    out = infer(model, dev, capture=model.fc, limit=12)
    assert model.training
    x = torch.cat([b[0] for b in dev])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(out.features, model.encoder(x)[:12])
        torch.testing.assert_close(out.outputs, model(x)[:12])
    assert torch.equal(out.labels, torch.cat([b[1] for b in dev])[:12])


def test_save_head_features_refuses_a_trainer_with_nothing_to_read(tmp_path):
    from pl_petune.callbacks import CallbackMisuse

    with pytest.raises(CallbackMisuse, match="^SaveHeadFeatures reads the train and dev loaders"):
        trainer(tmp_path, callbacks=[SaveHeadFeatures(head_attr="fc")]).test(MLP(), data()[1])
