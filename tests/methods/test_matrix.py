"""The shared test matrix: every registered method (and its variants) on a tiny BERT and a tiny RoBERTa.

Each case names, independently of the method's own selection code, which parameters must train (a predicate
on the parameter name written with plain string tests). After optimizer steps exactly those change and every
other parameter is bit-identical; a Lightning checkpoint round trip gives identical logits; methods whose
init promises it start out computing what the frozen backbone plus the head compute.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import lightning as L
import pytest
import torch

from pl_petune.methods import METHODS, PetLayerMethod, PetuneModule

FAMILIES = ("tiny_bert", "tiny_roberta")


def _layer(n: str) -> int | None:
    m = re.search(r"\.layer\.(\d+)\.", n)
    return int(m.group(1)) if m else None


def head(n: str) -> bool:
    return n.startswith("head.")


def in_layers(n: str) -> bool:
    return n.startswith("backbone.encoder.layer.")


def is_ffn(n: str) -> bool:
    return in_layers(n) and (".intermediate.dense." in n or (".output.dense." in n and ".attention." not in n))


def is_mha(n: str) -> bool:
    return in_layers(n) and any(f".attention.{k}." in n for k in ("self.query", "self.key", "self.value",
                                                                  "output.dense"))


def is_ln(n: str, where: str = "all") -> bool:
    if not in_layers(n) or ".LayerNorm." not in n:
        return False
    attention = ".attention.output.LayerNorm." in n
    return where == "all" or (where == "attention") == attention


# case id -> (method, kwargs, predicate over parameter names that must train)
CASES: dict[str, tuple[str, dict[str, Any], Callable[[str], bool]]] = {
    "finetune": ("finetune", {}, lambda n: not n.startswith("backbone.pooler.")),
    "adapter-pfeiffer": ("adapter", {"reduction_factor": 4}, lambda n: head(n) or ".adapters." in n),
    "adapter-houlsby": ("adapter", {"variant": "houlsby", "reduction_factor": 4},
                        lambda n: head(n) or ".adapters." in n),
    "prefix-flat": ("prefix", {"prefix_length": 3}, lambda n: head(n) or ".prefix_tuning." in n),
    "prefix-mlp": ("prefix", {"prefix_length": 3, "reparametrize": True, "bottleneck_size": 16},
                   lambda n: head(n) or ".prefix_tuning." in n),
    "prompt": ("prompt", {"prompt_length": 4}, lambda n: head(n) or "prompt_tuning." in n),
    "lora-qv": ("lora", {"r": 2}, lambda n: head(n) or ".lora_" in n),
    "lora-qkvo": ("lora", {"r": 2, "targets": ["q", "k", "v", "o"], "dropout": 0.1},
                  lambda n: head(n) or ".lora_" in n),
    "ia3": ("ia3", {}, lambda n: head(n) or ".loras." in n),
    "bitfit-all": ("bitfit", {}, lambda n: head(n) or (n.startswith("backbone.") and n.endswith(".bias")
                                                       and not n.startswith("backbone.pooler."))),
    "bitfit-ehft": ("bitfit", {"variant": "ehft"}, lambda n: head(n) or (in_layers(n) and n.endswith(".bias"))),
    "ffn": ("ffn", {}, lambda n: head(n) or is_ffn(n)),
    "mha": ("mha", {}, lambda n: head(n) or is_mha(n)),
    "layernorm-all": ("layernorm", {}, lambda n: head(n) or is_ln(n)),
    "layernorm-attention": ("layernorm", {"variant": "attention"}, lambda n: head(n) or is_ln(n, "attention")),
    "layernorm-ffn": ("layernorm", {"variant": "ffn"}, lambda n: head(n) or is_ln(n, "ffn")),
    "layernorm-layer1": ("layernorm", {"layers": [1]}, lambda n: head(n) or (is_ln(n) and _layer(n) == 1)),
    "random": ("random", {"size": 300}, None),  # entry-level; checked by the entries it reports
    "frozen": ("frozen", {}, head),
    "linear_probe": ("linear_probe", {}, head),
    "topk": ("topk", {"k": 1}, lambda n: head(n) or (in_layers(n) and _layer(n) == 1)),
    # encoder-decoder only: runs once, on the tiny T5 (see the backbone fixture)
    "cross_attention": ("cross_attention", {}, lambda n: head(n) or ".EncDecAttention." in n),
}
# PEFT tuners through the bridge (pl_petune.methods.peft_presets): the added tensors are named
# <module>.<tuner prefix>...default (PEFT's adapter name); tiny-model arguments where PEFT's defaults need wider layers.
def peft_added(*prefixes: str, frozen: tuple[str, ...] = ()) -> Callable[[str], bool]:
    def train(n: str) -> bool:
        return head(n) or (".default" in n and ".pooler." not in n and any(f".{p}" in n for p in prefixes)
                           and not any(f".{f}" in n for f in frozen))
    return train


PEFT_CASES: dict[str, tuple[str, dict[str, Any], Callable[[str], bool]]] = {
    "peft_lora": ("peft_lora", {"peft": {"r": 2, "lora_dropout": 0.1}}, peft_added("lora_A", "lora_B")),
    "peft_lora-qkvo": ("peft_lora", {"peft": {"r": 2, "target_modules": ["query", "key", "value", "attention.output.dense"]}},
                       peft_added("lora_A", "lora_B")),
    "dora": ("dora", {"peft": {"r": 2}}, peft_added("lora_A", "lora_B", "lora_magnitude_vector")),
    "rslora": ("rslora", {"peft": {"r": 2}}, peft_added("lora_A", "lora_B")),
    "pissa": ("pissa", {"peft": {"r": 2}}, peft_added("lora_A", "lora_B")),
    "olora": ("olora", {"peft": {"r": 2}}, peft_added("lora_A", "lora_B")),
    "adalora": ("adalora", {"peft": {"init_r": 4, "target_r": 2, "total_step": 20, "tinit": 1, "tfinal": 1}},
                peft_added("lora_A", "lora_B", "lora_E")),
    "vera": ("vera", {"peft": {"r": 4}}, peft_added("vera_lambda_b", "vera_lambda_d")),
    "loha": ("loha", {"peft": {"r": 2}}, peft_added("hada_")),
    "lokr": ("lokr", {"peft": {"r": 2}}, peft_added("lokr_")),
    "oft": ("oft", {"peft": {"r": 0, "oft_block_size": 4}}, peft_added("oft_R")),
    "boft": ("boft", {}, peft_added("boft_R", "boft_s")),
    "fourierft": ("fourierft", {"peft": {"n_frequency": 50}}, peft_added("fourierft_spectrum")),
    "peft_ia3": ("peft_ia3", {}, peft_added("ia3_l")),
    "ln_tuning": ("ln_tuning", {}, peft_added("ln_tuning_layers")),
    "peft_prompt": ("peft_prompt", {"peft": {"num_virtual_tokens": 3}}, peft_added("prompt_encoder")),
    "p_tuning": ("p_tuning", {"peft": {"num_virtual_tokens": 3, "encoder_hidden_size": 16}},
                 peft_added("prompt_encoder")),
    "peft_prefix": ("peft_prefix", {"peft": {"num_virtual_tokens": 3}}, peft_added("prompt_encoder")),
    "hra": ("hra", {"peft": {"r": 2}}, peft_added("hra_")),
    "c3a": ("c3a", {}, peft_added("c3a_")),
    "vblora": ("vblora", {"peft": {"r": 2, "num_vectors": 16}}, peft_added("vblora_")),
    "randlora": ("randlora", {"peft": {"r": 4}}, peft_added("randlora_lambda", "randlora_gamma")),
    "delora": ("delora", {"peft": {"r": 2}}, peft_added("delora_")),
    "gralora": ("gralora", {"peft": {"r": 4, "gralora_k": 2}}, peft_added("gralora_")),
    "hira": ("hira", {"peft": {"r": 2}}, peft_added("hira_")),
    "lily": ("lily", {"peft": {"r": 2}}, peft_added("lily_")),
    "beft": ("beft", {}, peft_added("beft_")),
    "deft": ("deft", {}, peft_added("deft_")),
    "glora": ("glora", {"peft": {"r": 2, "config_D_E": "none"}}, peft_added("glora_")),  # D scales the bias: 0 here
    "peanut": ("peanut", {"peft": {"r": 2}}, peft_added("peanut_")),
    "pvera": ("pvera", {"peft": {"r": 4}}, peft_added("pvera_lambda")),
    "supertuning": ("supertuning", {}, peft_added("supertuning_")),
    "tinylora": ("tinylora", {}, peft_added("tinylora_")),
    "unilora": ("unilora", {}, peft_added("unilora_")),
    "adamss": ("adamss", {}, peft_added("adamss_")),
    "osf": ("osf", {}, peft_added("osf_")),
    "frod": ("frod", {}, peft_added("frod_")),
    "psoft": ("psoft", {}, peft_added("psoft_")),
    "miss": ("miss", {"peft": {"r": 4}}, peft_added("miss_")),
    "shira": ("shira", {"peft": {"r": 2}}, peft_added("shira_")),
    "road": ("road", {"peft": {"group_size": 4}}, peft_added("road_")),
    "waveft": ("waveft", {"peft": {"n_frequency": 64}}, peft_added("waveft_")),
    # the generic bridge, with a tuner that has no preset: trainable token embeddings ([CLS] is in every batch)
    "peft-generic": ("peft", {"peft": {"peft_type": "TRAINABLE_TOKENS", "target_modules": ["word_embeddings"],
                                       "token_indices": [101]}}, peft_added("trainable_tokens_delta")),
}
CASES.update(PEFT_CASES)
# The tuners the issue names run on both families; the rest of PEFT's catalogue on tiny BERT (suite time).
PEFT_CORE = ("peft_lora", "peft_lora-qkvo", "dora", "rslora", "pissa", "olora", "adalora", "vera", "loha", "lokr",
             "oft", "boft", "fourierft", "peft_ia3", "ln_tuning", "peft_prompt", "p_tuning", "peft_prefix",
             "peft-generic")
ONE_FAMILY = tuple(c for c in PEFT_CASES if c not in PEFT_CORE)
ENCODER_DECODER = ("cross_attention",)
# Methods whose initialisation promises the frozen backbone's function (up-projection / B / scales neutral).
IDENTITY_AT_INIT = ("adapter-pfeiffer", "adapter-houlsby", "lora-qv", "lora-qkvo", "ia3")


def test_every_registered_method_is_in_the_matrix():
    assert {m for m, _, _ in CASES.values()} == set(METHODS)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (4, 10), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 1, 2, 1])}


def _build(case: str, backbone: str, **extra: Any) -> PetuneModule:
    method, kwargs, _ = CASES[case]
    return METHODS[method](task="cb", backbone=backbone, lr=1e-2, weight_decay=0.1, **{**kwargs, **extra})


def _steps(model: PetuneModule, n: int = 2) -> None:
    """``n`` AdamW steps over the module's own param groups (as ``configure_optimizers`` builds them)."""
    model.train()
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-2)
    for i in range(n):
        batch = _batch(i)
        loss = model.loss(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                          batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(params=FAMILIES)
def backbone(request) -> str:
    case = request.node.callspec.params.get("case") if hasattr(request.node, "callspec") else None
    if case in ENCODER_DECODER:
        if request.param != FAMILIES[0]:
            pytest.skip("encoder-decoder case: runs once, on tiny_t5")
        return request.getfixturevalue("tiny_t5")
    if case in ONE_FAMILY and request.param != FAMILIES[0]:
        pytest.skip("PEFT catalogue case beyond the named tuners: runs on tiny_bert")
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("case", list(CASES))
def test_exactly_the_intended_parameters_change(case: str, backbone: str):
    model = _build(case, backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _steps(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expect = CASES[case][2]
    if expect is None:  # random: only the chosen entries of the backbone, and the head
        entries = model.trainable_entries()
        assert sum(len(i) for i in entries.values()) == 300
        for n, p in model.named_parameters():
            diff = (p != before[n]).reshape(-1).nonzero().flatten()
            if n in entries:
                assert set(diff.tolist()) <= set(entries[n].tolist()), n
            elif not head(n):
                assert diff.numel() == 0, n
        assert any(n in entries for n in changed) and any(head(n) for n in changed)
        return
    intended = {n for n, _ in model.named_parameters() if expect(n)}
    assert intended, case
    assert set(model.trainable_names()) == intended
    assert changed == intended, (sorted(intended - changed)[:4], sorted(changed - intended)[:4])


def _slow_beyond_core(cases):
    """The PEFT catalogue beyond the named tuners checks its round trip and drop in the slow suite (time)."""
    return [pytest.param(c, marks=pytest.mark.slow) if c in ONE_FAMILY else c for c in cases]


@pytest.mark.parametrize("case", _slow_beyond_core(CASES))
def test_checkpoint_round_trip_gives_identical_logits(case: str, backbone: str, tmp_path):
    model = _build(case, backbone)
    _steps(model, 1)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), model.CHECKPOINT_HYPER_PARAMS_KEY: dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    loaded = type(model).load_from_checkpoint(path, map_location="cpu")
    batch = _batch(5)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"])
        b = loaded(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(a, b)
    assert loaded.trainable_names() == model.trainable_names()


@pytest.mark.parametrize("case", IDENTITY_AT_INIT)
def test_starts_as_frozen_backbone_plus_head(case: str, backbone: str):
    reference = METHODS["frozen"](task="cb", backbone=backbone).eval()
    model = _build(case, backbone).eval()
    batch = _batch(3)
    with torch.no_grad():
        assert torch.allclose(model(batch["input_ids"], batch["attention_mask"]),
                              reference(batch["input_ids"], batch["attention_mask"]), atol=1e-6, rtol=0)


def test_identity_check_can_fail(tiny_bert):
    """Control for the test above: BERT-style adapter init (both projections random) changes the function."""
    reference = METHODS["frozen"](task="cb", backbone=tiny_bert).eval()
    model = METHODS["adapter"](task="cb", backbone=tiny_bert, init="bert", reduction_factor=2).eval()
    batch = _batch(3)
    with torch.no_grad():
        assert not torch.allclose(model(batch["input_ids"], batch["attention_mask"]),
                                  reference(batch["input_ids"], batch["attention_mask"]), atol=1e-6, rtol=0)


# Tuners whose init rewrites the pretrained weights (W keeps the residual of the adapter's share): no drop.
REWRITES_PRETRAINED = ("pissa", "olora")


@pytest.mark.parametrize("case", _slow_beyond_core(c for c, (m, _, _) in CASES.items()
                                                   if issubclass(METHODS[m], PetLayerMethod)
                                                   and c not in REWRITES_PRETRAINED))
def test_drop_pet_layers_leaves_pretrained_backbone_and_trained_head(case: str, tiny_roberta):
    model = _build(case, tiny_roberta)
    pristine = METHODS["finetune"](task="cb", backbone=tiny_roberta).backbone.state_dict()
    names = model.pet_parameter_names()
    assert names and all(model._is_added(n) for n in names)
    _steps(model, 1)
    trained_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.drop_pet_layers()
    assert model.pet_parameter_names() == []
    after = model.backbone.state_dict()
    assert after.keys() == pristine.keys()
    assert all(torch.equal(after[k], pristine[k]) for k in pristine)
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in trained_head.items())
    batch = _batch(1)
    model(batch["input_ids"], batch["attention_mask"])  # still runs without the layers


@pytest.mark.parametrize("case", REWRITES_PRETRAINED)
def test_drop_pet_layers_refuses_when_the_init_rewrote_the_pretrained_weights(case: str, tiny_bert):
    from pl_petune.errors import ConfigError

    model = _build(case, tiny_bert)
    pristine = METHODS["finetune"](task="cb", backbone=tiny_bert).backbone.state_dict()
    base = {n.replace("base_model.model.", "").replace("base_layer.", ""): p for n, p in
            model.backbone.state_dict().items() if model._is_added("." + n) is False}
    assert any(not torch.equal(base[k], pristine[k]) for k in pristine if k in base)  # it did rewrite W
    with pytest.raises(ConfigError, match="rewrites the pretrained weights"):
        model.drop_pet_layers()
