"""DDP on CPU (2 processes, gloo): freezing and the EH-FT switch give the same trainable set on both ranks."""

from __future__ import annotations

import hashlib
import json

import lightning as L
import pytest
import torch

from helpers import TinyLoRAModule, TinyModule, make_data, trainer_kwargs
from pl_petune.callbacks import ChildTuningD, Freezing, HeadWarmStart


class RankReport(L.Callback):
    """Each rank writes its trainable set and a weight hash per epoch to a JSON file."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.rows: dict[int, dict] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        h = hashlib.sha256()
        for _, v in sorted(pl_module.state_dict().items()):
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self.rows[trainer.current_epoch] = {
            "trainable": [n for n, p in pl_module.named_parameters() if p.requires_grad],
            "sha": h.hexdigest(),
            "moved_layer0": bool(not torch.equal(pl_module.backbone.layer[0].norm.weight,
                                                 torch.ones_like(pl_module.backbone.layer[0].norm.weight))),
        }

    def on_fit_end(self, trainer, pl_module) -> None:
        extra = {}
        for cb in trainer.callbacks:
            if isinstance(cb, HeadWarmStart):
                extra = cb.record_extra()["head_warm_start"]
            if isinstance(cb, ChildTuningD):
                h = hashlib.sha256()
                for n in sorted(cb.masks):
                    h.update(n.encode() + cb.masks[n].numpy().tobytes())
                extra = {"mask_sha": h.hexdigest(), "kept": sum(int(m.sum()) for m in cb.masks.values()),
                         "total": sum(m.numel() for m in cb.masks.values())}
        with open(f"{self.out}.{trainer.global_rank}.json", "w") as fh:
            json.dump({**self.rows, "extra": extra}, fh, default=str)


def _run(tmp_path, model, callback):
    out = str(tmp_path / "rank")
    train, dev = make_data(n=64)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, devices=2, strategy="ddp_fork", max_epochs=3,
                                         callbacks=[callback, RankReport(out)], use_distributed_sampler=True))
    trainer.fit(model, train, dev)
    return [json.load(open(f"{out}.{r}.json")) for r in (0, 1)]


@pytest.mark.parametrize("case", ["freezing", "ehft-switch"])
def test_ddp_same_trainable_set_and_weights_on_both_ranks(tmp_path, case):
    torch.manual_seed(0)
    if case == "freezing":
        model, cb = TinyModule(), Freezing(unfreeze=[{"epoch": 1, "layers": [0]}])
    else:
        model, cb = TinyLoRAModule(), HeadWarmStart(stage1_epochs=1, stage1_lr=5e-3, stage2_lr=1e-2)
    r0, r1 = _run(tmp_path, model, cb)
    for epoch in ("0", "1", "2"):
        assert r0[epoch]["trainable"] == r1[epoch]["trainable"]
        # gradients of parameters unfrozen after DDP wrapped the model are reduced: ranks stay bit-identical
        assert r0[epoch]["sha"] == r1[epoch]["sha"]
    assert len(r0["1"]["trainable"]) > len(r0["0"]["trainable"])
    assert not r0["0"]["moved_layer0"] and r0["2"]["moved_layer0"]


def test_ddp_lbfgs_probe_sees_every_rank_s_examples(tmp_path):
    """Each rank holds half of the train and dev sets; the probe is fitted on all of them, once, on rank 0, and
    both ranks load the same head."""
    torch.manual_seed(0)
    r0, r1 = _run(tmp_path, TinyModule(), HeadWarmStart(solver="lbfgs", stage2_lr=1e-2, cs=(0.1, 1.0)))
    p0, p1 = r0["extra"]["lbfgs"], r1["extra"]["lbfgs"]
    assert p0["n_train"] == 48 and p0["n_dev"] == 16  # make_data(n=64): 48 train, 16 dev, split over 2 ranks
    assert p0 == p1
    for epoch in ("0", "1", "2"):
        assert r0[epoch]["sha"] == r1[epoch]["sha"]


def test_ddp_child_tuning_one_mask_on_both_ranks(tmp_path):
    """The Fisher sums are all-reduced: both ranks keep the same child network and stay bit-identical."""
    torch.manual_seed(0)
    r0, r1 = _run(tmp_path, TinyModule(lr=1e-2, wd=0.0), ChildTuningD(reserve_p=0.1))
    assert r0["extra"]["mask_sha"] == r1["extra"]["mask_sha"]
    assert r0["extra"]["kept"] == pytest.approx(0.1 * r0["extra"]["total"], abs=2)
    for epoch in ("0", "1", "2"):
        assert r0[epoch]["sha"] == r1[epoch]["sha"]
