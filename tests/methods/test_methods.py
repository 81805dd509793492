"""Behaviour of single methods beyond the shared matrix: merge, probing mode, seeding, refusals."""

from __future__ import annotations

import pytest
import torch

from pl_petune.errors import ConfigError
from pl_petune.methods import METHODS, LinearProbe, LoRA, PrefixTuning, RandomSubset, get_method

from .test_matrix import _batch, _steps


def test_lora_merge_keeps_logits_and_folds_the_update(tiny_roberta):
    model = LoRA(task="cb", backbone=tiny_roberta, r=2, targets=["q", "k", "v", "o"], lr=1e-2)
    _steps(model, 2)
    model.eval()
    batch = _batch(4)
    query = model.backbone.encoder.layer[0].attention.self.query
    weight = query.base_layer.weight.detach().clone()
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"])
        model.merge()
        after = model(batch["input_ids"], batch["attention_mask"])
    assert not torch.equal(query.base_layer.weight, weight)
    assert torch.allclose(before, after, atol=1e-5)
    model.unmerge()
    assert torch.allclose(query.base_layer.weight, weight, atol=1e-6)


def test_linear_probe_backbone_stays_in_eval_mode_without_graph(tiny_bert):
    model = LinearProbe(task="cb", backbone=tiny_bert)
    model.train()
    assert model.training and model.head.training and not model.backbone.training
    batch = _batch(0)
    features = model.encode(batch["input_ids"], batch["attention_mask"])
    assert features.grad_fn is None
    # dropout is off in the backbone: two train-mode passes give the same features
    assert torch.equal(features, model.encode(batch["input_ids"], batch["attention_mask"]))


def test_frozen_backbone_keeps_dropout_active(tiny_bert):
    model = METHODS["frozen"](task="cb", backbone=tiny_bert)
    model.train()
    batch = _batch(0)
    assert not torch.equal(model.encode(batch["input_ids"], batch["attention_mask"]),
                           model.encode(batch["input_ids"], batch["attention_mask"]))


def test_random_subset_is_seeded_by_init_seed(tiny_bert):
    a = RandomSubset(task="cb", backbone=tiny_bert, size=50, init_seed=1).trainable_entries()
    b = RandomSubset(task="cb", backbone=tiny_bert, size=50, init_seed=1).trainable_entries()
    c = RandomSubset(task="cb", backbone=tiny_bert, size=50, init_seed=2).trainable_entries()
    flat = lambda e: sorted((n, i) for n, idx in e.items() for i in idx.tolist())  # noqa: E731
    assert flat(a) == flat(b) != flat(c)
    assert len(flat(a)) == 50


def test_new_parameters_follow_init_seed_and_not_the_global_rng(tiny_bert):
    torch.manual_seed(0)
    a = PrefixTuning(task="cb", backbone=tiny_bert, prefix_length=2, init_seed=5)
    torch.manual_seed(1)
    b = PrefixTuning(task="cb", backbone=tiny_bert, prefix_length=2, init_seed=5)
    c = PrefixTuning(task="cb", backbone=tiny_bert, prefix_length=2, init_seed=6)
    sa, sb, sc = (dict(m.named_parameters()) for m in (a, b, c))
    names = a.pet_parameter_names()
    assert all(torch.equal(sa[n], sb[n]) for n in names)
    assert not all(torch.equal(sa[n], sc[n]) for n in names)


def test_prefix_dropout_reaches_the_prefix(tiny_roberta):
    model = PrefixTuning(task="cb", backbone=tiny_roberta, prefix_length=2, prefix_dropout=0.3)
    rates = [m.p for n, m in model.backbone.named_modules() if "prefix_tunings" in n and
             isinstance(m, torch.nn.Dropout)]
    assert rates and all(p == 0.3 for p in rates)


def test_prompt_tuning_inserts_the_prompt_after_the_first_token(tiny_bert):
    model = METHODS["prompt"](task="cb", backbone=tiny_bert, prompt_length=3).eval()
    batch = _batch(0)
    with torch.no_grad():
        out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    prompt = model.backbone.prompt_tuning.prompt_tunings["petune"]
    assert prompt.prompt_tuning_config.combine == "prefix_after_bos"  # [CLS] stays at position 0 for the head


@pytest.fixture(scope="module")
def unsupported_backbone(tmp_path_factory) -> str:
    """A tiny ConvBERT: an encoder that AdapterHub ``adapters`` does not support."""
    from transformers import ConvBertConfig, ConvBertModel

    path = tmp_path_factory.mktemp("convbert")
    ConvBertModel(ConvBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, embedding_size=32)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("method", ["adapter", "prefix", "prompt", "ia3"])
def test_unsupported_backbone_gives_one_line_error_naming_it(method, unsupported_backbone):
    with pytest.raises(ConfigError) as err:
        get_method(method)(task="cb", backbone=unsupported_backbone)
    message = str(err.value)
    assert "\n" not in message and "'convbert'" in message and repr(method) in message


@pytest.mark.parametrize("method,kwargs,needle", [
    ("adapter", {"variant": "parallel"}, "'parallel'"),
    ("adapter", {"init": "zeros"}, "'zeros'"),
    ("bitfit", {"variant": "some"}, "'some'"),
    ("layernorm", {"variant": "embedding"}, "'embedding'"),
    ("layernorm", {"layers": [7]}, "layer 7"),
    ("lora", {"targets": ["q", "query"]}, "'query'"),
    ("ia3", {"attn_matrices": ["o"]}, "'o'"),
    ("topk", {"k": 9}, "k=9"),
    ("random", {"size": 10**9}, "1000000000"),
])
def test_bad_method_arguments_are_refused(method, kwargs, needle, tiny_bert):
    with pytest.raises(ConfigError) as err:
        get_method(method)(task="cb", backbone=tiny_bert, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*adapter, .*bitfit"):
        get_method("adaptor")
