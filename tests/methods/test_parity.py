"""Parity options with the papers' reference code (issue 13, "Parity"): each pins a choice that differs from
our default, with the reference's value that the paper recipes set."""

from __future__ import annotations

import pytest
import torch

from pl_petune.methods import get_method
from pl_petune.tasks import get_task


# ---- (1) multiple choice: PETuning scores each choice with the frozen pooler, dropout, Linear(hidden, 1) -------
@pytest.mark.parametrize("method", ["finetune", "frozen", "adapter", "prefix", "lora", "bitfit"])
def test_pooler_linear_head_on_copa_trains_hidden_plus_one_and_keeps_the_pooler_frozen(method, tiny_roberta):
    model = get_method(method)(task="copa", backbone=tiny_roberta, head="pooler_linear")
    hidden = model.backbone.config.hidden_size
    head = {n: p for n, p in model.named_parameters() if n.startswith("head.")}
    assert sum(p.numel() for p in head.values()) == hidden + 1
    assert all(p.requires_grad for p in head.values())
    pooler = [p for n, p in model.named_parameters() if n.startswith("backbone.pooler.")]
    assert pooler and not any(p.requires_grad for p in pooler)


def test_pooler_linear_reads_the_pooler_output(tiny_roberta):
    model = get_method("frozen")(task="copa", backbone=tiny_roberta, head="pooler_linear").eval()
    ids = torch.arange(100, 112).view(1, 2, 6)
    mask = torch.ones_like(ids)
    logits = model(ids, mask)
    pooled = model.backbone(input_ids=ids.view(2, 6), attention_mask=mask.view(2, 6)).pooler_output
    expected = model.head.net[1](pooled).view(1, 2)
    assert logits.shape == (1, 2) and torch.allclose(logits, expected)
    with torch.no_grad():  # the pooler decides the score: changing it changes the logits
        model.backbone.pooler.dense.bias.add_(1.0)
    assert not torch.allclose(model(ids, mask), logits)


def test_default_mlp_head_is_unchanged(tiny_roberta):
    model = get_method("frozen")(task="copa", backbone=tiny_roberta)
    hidden = model.backbone.config.hidden_size
    assert sum(p.numel() for p in model.head.parameters()) == hidden * hidden + hidden + hidden + 1


def test_pooler_linear_refused_without_a_pooler():
    from pl_petune.errors import ConfigError

    with pytest.raises(ConfigError, match="head pooler_linear needs a backbone with a pooler; 'config:t5-small'"):
        get_method("finetune")(task="cb", backbone="config:t5-small", head="pooler_linear")


# ---- (5) module-wise: BertForSequenceClassification's head, pretrained pooler, trainable only when asked -------
def test_module_wise_full_ft_trains_the_pooler_and_other_rows_do_not(tiny_bert):
    full = get_method("finetune")(task="cola", backbone=tiny_bert, head="pooler_linear", train_pooler=True)
    names = set(full.trainable_names())
    assert {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"} <= names
    hidden = full.backbone.config.hidden_size
    assert sum(p.numel() for p in full.head.parameters()) == hidden * 2 + 2  # Linear(hidden, 2): no new dense
    for method in ("layernorm", "ffn", "mha", "bitfit", "frozen", "random"):
        model = get_method(method)(task="cola", backbone=tiny_bert, head="pooler_linear")
        assert not any(n.startswith("backbone.pooler.") for n in model.trainable_names()), method
        # the pooler is the pretrained one, as loaded
        assert torch.equal(model.backbone.pooler.dense.weight, full.backbone.pooler.dense.weight)


# ---- (2) WiC template 0, (3) COPA's connective in the first segment -----------------------------------------
def test_wic_is_petuning_template_zero():
    row = {"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "The bank closed."}
    assert get_task("wic").format(row) == (
        "He sat on the bank. The bank closed. Does bank have the same meaning in both sentences?", None)


@pytest.mark.parametrize("question, connective", [("cause", "because"), ("effect", "so")])
def test_copa_connective_ends_the_first_segment(question, connective):
    row = {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.", "question": question}
    assert get_task("copa").format(row) == [(f"The man fell. {connective}", "He slipped."),
                                           (f"The man fell. {connective}", "He sang.")]


def test_wic_and_copa_tokenize_as_petuning(tiny_bert):
    """What the model reads: WiC one segment (no [SEP] between the sentences' template and a second segment),
    COPA's connective before the first [SEP]."""
    from pl_petune.backbones import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    a, b = get_task("wic").format({"word": "w", "sentence1": "x.", "sentence2": "y."})
    enc = tok(a, b)
    assert enc["input_ids"].count(tok.sep_token_id) == 1
    (a, b), _ = get_task("copa").format({"premise": "p.", "choice1": "c1", "choice2": "c2", "question": "cause"})
    ids = tok(a, b)["input_ids"]
    first = tok.decode(ids[1:ids.index(tok.sep_token_id)])
    assert first.endswith("because")


# ---- (6) EH-FT's prefix init randn * 0.01 ---------------------------------------------------------------------
def _prefix_values(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if model._is_added(n)])


def test_prefix_init_std_gives_ehft_scale_and_default_keeps_adapterhub(tiny_roberta):
    default = _prefix_values(get_method("prefix")(task="cb", backbone=tiny_roberta, prefix_length=16))
    ehft = _prefix_values(get_method("prefix")(task="cb", backbone=tiny_roberta, prefix_length=16,
                                               prefix_init_std=0.01))
    assert 0.9 < default.std().item() < 1.1  # AdapterHub's flat prefix: randn
    assert 0.009 < ehft.std().item() < 0.011 and abs(ehft.mean().item()) < 0.002
    again = _prefix_values(get_method("prefix")(task="cb", backbone=tiny_roberta, prefix_length=16,
                                                prefix_init_std=0.01))
    other = _prefix_values(get_method("prefix")(task="cb", backbone=tiny_roberta, prefix_length=16,
                                                prefix_init_std=0.01, init_seed=7))
    assert torch.equal(ehft, again) and not torch.equal(ehft, other)  # drawn under init_seed


# ---- (10) random subset: nominal vs effective entries ---------------------------------------------------------
def _train_steps(model, ids: torch.Tensor, steps: int = 2) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    labels = torch.zeros(ids.shape[0], dtype=torch.long)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(model(ids, torch.ones_like(ids)), labels).backward()
        opt.step()


def test_random_subset_reports_nominal_and_effective_entries(tiny_bert):
    model = get_method("random")(task="cb", backbone=tiny_bert, size=4000, init_seed=3)
    report = model.parameter_report()
    assert report["random_entries_nominal"] == 4000
    assert report["random_entries_effective"] is None  # known only once training has run
    embedded = report["random_entries_in_embeddings"]
    assert embedded > 0.5 * 4000  # a tiny model: the word embeddings dominate its parameter count
    ids = torch.tensor([[101, 2000, 2001, 102]] * 2)  # four distinct tokens, positions 0..3, segment 0
    _train_steps(model, ids)
    effective = model.parameter_report()["random_entries_effective"]
    # every chosen entry outside the embeddings gets a gradient; in the embeddings only those of rows in use
    index = model.trainable_entries()
    hidden = model.backbone.config.hidden_size
    used = 0
    for name, idx in index.items():
        if name == "backbone.embeddings.word_embeddings.weight":
            used += int(torch.isin(idx // hidden, torch.tensor([101, 2000, 2001, 102])).sum())
        elif name == "backbone.embeddings.position_embeddings.weight":
            used += int((idx // hidden < 4).sum())
        elif name == "backbone.embeddings.token_type_embeddings.weight":
            used += int((idx // hidden == 0).sum())
        else:
            used += len(idx)
    assert effective == used < 4000
    assert model.record_extra()["random_entries_effective"] == effective


def test_random_subset_drawn_from_the_encoder_is_fully_effective(tiny_bert):
    model = get_method("random")(task="cb", backbone=tiny_bert, size=500, draw_from="encoder")
    assert all(n.startswith("backbone.encoder.layer.") for n in model.trainable_entries())
    assert model.parameter_report()["random_entries_in_embeddings"] == 0
    _train_steps(model, torch.tensor([[101, 2000, 102]] * 2))
    assert model.parameter_report()["random_entries_effective"] == 500


def test_random_subset_effective_count_survives_a_checkpoint(tiny_bert):
    a = get_method("random")(task="cb", backbone=tiny_bert, size=300, init_seed=5)
    _train_steps(a, torch.tensor([[101, 2000, 102]] * 2))
    ckpt: dict = {}
    a.on_save_checkpoint(ckpt)
    b = get_method("random")(task="cb", backbone=tiny_bert, size=300, init_seed=5)
    b.on_load_checkpoint(ckpt)
    assert b.effective_entries() == a.effective_entries() is not None


@pytest.mark.slow
def test_run_record_carries_nominal_and_effective_random_entries(tiny_bert, data_dir, tmp_path, monkeypatch):
    """Through `petune fit`, as a user runs it: the record states both budgets."""
    import json
    from pathlib import Path

    from pl_petune.cli import main

    monkeypatch.chdir(tmp_path)
    quick = str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml")
    rc = main(["fit", "--config", quick, "--model.class_path", "pl_petune.methods.RandomSubset",
               "--model.init_args.backbone", tiny_bert, "--model.init_args.size", "3000",
               "--data.data_dir", data_dir, "--data.max_length", "32", "--trainer.max_epochs", "1",
               "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(tmp_path / "s.sqlite")])
    assert rc == 0
    record = json.loads(next((tmp_path / "runs").rglob("record.json")).read_text())
    extra = record["extra"]
    assert extra["random_entries_nominal"] == 3000 and extra["random_draw_from"] == "backbone"
    assert extra["random_entries_in_embeddings"] > 0
    assert 0 < extra["random_entries_effective"] < 3000  # unused embedding rows never get a gradient
