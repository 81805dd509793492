"""EH-FT's one-logit head for two-class tasks: one output, BCE-with-logits, positive above 0; refused elsewhere."""

from __future__ import annotations

from pathlib import Path

from pl_petune.packaged import config_args
import pytest
import torch

from pl_petune.cli import main
from pl_petune.errors import ConfigError
from pl_petune.methods import METHODS
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (6, 12), generator=g)
    ids[:, 0] = 101
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0, 1, 0])}


@pytest.mark.parametrize("method", ["finetune", "lora", "bitfit"])
def test_one_logit_head_loss_and_predictions(method, tiny_bert):
    model = METHODS[method](task="rte", backbone=tiny_bert, head="ehft", binary_head="one_logit")
    assert model.head.net[-1].out_features == 1
    b = _batch()
    model.eval()
    logits = model(b["input_ids"], b["attention_mask"])
    assert logits.shape == (6,)
    manual = torch.mean(torch.log1p(torch.exp(-logits)) * b["labels"] + torch.log1p(torch.exp(logits)) * (1 - b["labels"]))
    assert model.loss(logits, b["labels"]).item() == pytest.approx(manual.item(), rel=1e-5)
    assert model.predictions(logits).tolist() == [int(v > 0) for v in logits.tolist()]
    two = METHODS[method](task="rte", backbone=tiny_bert, head="ehft")
    assert two.head.net[-1].out_features == 2  # the default is unchanged


@pytest.mark.parametrize("task, kind", [("cb", "3 labels"), ("stsb", "regression"), ("copa", "multiple_choice")])
def test_one_logit_refused_where_the_task_is_not_two_class(task, kind, tiny_bert):
    with pytest.raises(ConfigError, match=f"binary_head one_logit needs a two-class task; {task} is .*{kind}"):
        METHODS["finetune"](task=task, backbone=tiny_bert, binary_head="one_logit")
    with pytest.raises(ConfigError, match="unknown binary_head 'sigmoid'; known: two_logits, one_logit"):
        METHODS["finetune"](task="rte", backbone=tiny_bert, binary_head="sigmoid")


def test_one_logit_fit_with_lbfgs_probe_end_to_end(tmp_path, tiny_bert, data_dir):
    """LP-FT's L-BFGS probe maps onto the single logit, and the fit scores and records as usual."""
    store = tmp_path / "s.sqlite"
    assert main(["fit", *config_args(str(ROOT / "recipes" / "methods" / "lpft_lbfgs.yaml")), "--data.task", "rte",
                 "--model.init_args.backbone", tiny_bert, "--model.init_args.binary_head", "one_logit",
                 "--data.data_dir", data_dir, "--data.train_limit", "48", "--data.max_length", "32",
                 "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
                 "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store)]) == 0
    (rec,) = Store(store).records()
    assert rec["hparams"]["model.init_args.binary_head"] == "one_logit"
    assert rec["extra"]["head_warm_start"]["lbfgs"]["classes"] == [0, 1]
    assert 0.0 <= rec["test_metrics"]["test/accuracy"] <= 1.0 and rec["test_metrics"]["test/loss"] > 0
