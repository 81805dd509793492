"""DDP on CPU (2 processes, gloo) with the outside project's modules: the EH-FT switch with a carved dev split,
and gradual unfreezing with an optimizer that holds every parameter; both ranks stay bit-identical."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from outside_models import MLP, data, state_sha, trainer
from pl_petune.callbacks import DevSplitEarlyStopping, Freezing, HeadWarmStart


class RankReport(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.rows = out, {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.rows[trainer.current_epoch] = {"sha": state_sha(pl_module),
                                            "trainable": [n for n, p in pl_module.named_parameters() if p.requires_grad]}

    def on_fit_end(self, trainer, pl_module) -> None:
        extra = {cb.__class__.__name__: cb.state_dict().get("best_model_path") for cb in trainer.callbacks
                 if isinstance(cb, DevSplitEarlyStopping)}
        with open(f"{self.out}.{trainer.global_rank}.json", "w") as fh:
            json.dump({"rows": self.rows, "extra": extra, "final": state_sha(pl_module)}, fh)


@pytest.mark.parametrize("case", ["ehft+devsplit", "gradual+optimize_all"])
def test_ddp_both_ranks_identical(tmp_path, case):
    torch.manual_seed(0)
    if case == "ehft+devsplit":
        model = MLP(pet=True)
        callbacks = [HeadWarmStart(backbone_attr="encoder", head_attr="fc", stage1_epochs=1, stage1_lr=1e-2),
                     DevSplitEarlyStopping("val_loss", patience=5, dev_fraction=0.25)]
    else:
        model = MLP(optimize_all=True)
        callbacks = [Freezing(backbone_attr="encoder", gradual_every=1, gradual_start=1)]
    out = str(tmp_path / "rank")
    train, dev = data(n=80)
    t = trainer(tmp_path, devices=2, strategy="ddp_fork", max_epochs=3, use_distributed_sampler=True,
                callbacks=[*callbacks, RankReport(out)])
    if case == "ehft+devsplit":
        t.fit(model, train)
    else:
        t.fit(model, train, dev)
    r0, r1 = (json.load(open(f"{out}.{r}.json")) for r in (0, 1))
    assert r0["rows"] == r1["rows"] and r0["final"] == r1["final"]
    assert r0["extra"] == r1["extra"]
    assert len(r0["rows"]["2"]["trainable"]) > len(r0["rows"]["0"]["trainable"])
