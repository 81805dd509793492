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


@pytest.mark.parametrize("case", list(CASES))
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


@pytest.mark.parametrize("case", [c for c, (m, _, _) in CASES.items() if issubclass(METHODS[m], PetLayerMethod)])
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
