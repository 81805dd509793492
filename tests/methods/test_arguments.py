"""Method arguments are typed: a bad value is refused when the recipe or command line is parsed, before any
backbone loads, as one line naming the argument, the value and what is allowed (issue 15 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pl_petune.cli import main
from pl_petune.errors import ConfigError
from pl_petune.methods import get_method

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")
M = "pl_petune.methods."

# (class or None for the quickstart's FullFinetune, argument, bad value, the one line must contain)
CASES = [
    (None, "lr", "-1", "lr must be positive, got -1.0"),
    (None, "lr", "0", "lr must be positive, got 0.0"),
    (None, "weight_decay", "-0.01", "weight_decay must be >= 0, got -0.01"),
    (None, "warmup_ratio", "1.0", "warmup_ratio must be in [0, 1), got 1.0"),
    (None, "adam_eps", "0", "adam_eps must be positive, got 0.0"),
    (None, "adam_eps", "-1e-8", "adam_eps must be positive, got -1e-08"),
    (None, "betas", "[0.9, 1.0]", "betas must be in [0, 1), got 1.0"),
    (None, "betas", "[-0.1, 0.999]", "betas must be in [0, 1), got -0.1"),
    (None, "head_dropout", "1.0", "head_dropout must be in [0, 1), got 1.0"),
    (None, "head_dropout", "-0.5", "head_dropout must be in [0, 1), got -0.5"),
    (None, "hidden_dropout", "1.5", "hidden_dropout must be in [0, 1), got 1.5"),
    (None, "init_seed", "-1", "init_seed must be an integer in [0, 4294967295], got -1"),
    (None, "init_seed", "4294967296", "init_seed must be an integer in [0, 4294967295], got 4294967296"),
    (None, "head", "big", "unknown head 'big'; known: mlp, linear, ehft, pooler_linear"),
    (None, "binary_head", "sigmoid", "unknown binary_head 'sigmoid'; known: two_logits, one_logit"),
    (None, "lr", "fast", "Got value: fast"),
    (None, "train_pooler", "true", "train_pooler true needs head pooler_linear"),
    ("LoRA", "r", "0", "r must be an integer >= 1, got 0"),
    ("LoRA", "r", "2.5", "Got value: 2.5"),
    ("LoRA", "alpha", "0", "alpha must be positive, got 0.0"),
    ("LoRA", "dropout", "1.0", "dropout must be in [0, 1), got 1.0"),
    ("LoRA", "targets", "[q, query]", "unknown targets 'query'; known: q, k, v, o, ffn_in, ffn_out"),
    ("PrefixTuning", "prefix_length", "0", "prefix_length must be an integer >= 1, got 0"),
    ("PrefixTuning", "prefix_dropout", "1.0", "prefix_dropout must be in [0, 1), got 1.0"),
    ("PrefixTuning", "bottleneck_size", "-3", "bottleneck_size must be an integer >= 1, got -3"),
    ("PrefixTuning", "prefix_init_std", "0", "prefix_init_std must be positive, got 0.0"),
    ("PromptTuning", "prompt_length", "0", "prompt_length must be an integer >= 1, got 0"),
    ("Adapter", "reduction_factor", "0", "reduction_factor must be an integer >= 1, got 0"),
    ("Adapter", "variant", "parallel", "unknown variant 'parallel'; known: pfeiffer, houlsby"),
    ("Adapter", "init", "zeros", "unknown init 'zeros'; known: identity, bert, houlsby"),
    ("Adapter", "non_linearity", "relux", "unknown non_linearity 'relux'; known: relu, gelu"),
    ("IA3", "attn_matrices", "[k, o]", "unknown attn_matrices 'o'; known: q, k, v"),
    ("BitFit", "variant", "some", "unknown variant 'some'; known: all, ehft"),
    ("LayerNormTuning", "variant", "embedding", "unknown variant 'embedding'; known: all, attention, ffn"),
    ("TopK", "k", "0", "k must be an integer >= 1, got 0"),
    ("RandomSubset", "size", "0", "size must be an integer >= 1, got 0"),
    ("RandomSubset", "draw_from", "embeddings", "unknown draw_from 'embeddings'; known: backbone, encoder"),
]


@pytest.fixture
def no_backbone(monkeypatch):
    """Fail the test if anything loads a backbone: refusals happen before."""
    from pl_petune.methods import base

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was loaded before the bad argument was refused")

    monkeypatch.setattr(base, "load_backbone", refuse)


@pytest.mark.parametrize("cls, arg, value, needle", CASES, ids=[f"{c or 'FullFinetune'}.{a}={v}"
                                                                 for c, a, v, _ in CASES])
def test_bad_argument_is_refused_at_parse_time(cls, arg, value, needle, tmp_path, monkeypatch, capsys,
                                                no_backbone):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", QUICK]
    if cls:
        argv += ["--model.class_path", M + cls]
    argv += [f"--model.init_args.{arg}={value}", "--run.out_dir", str(tmp_path / "runs"),
             "--run.store", str(tmp_path / "s.sqlite")]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert needle in err[0]
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_bad_argument_in_a_recipe_file_is_refused_the_same_way(tmp_path, monkeypatch, capsys, no_backbone):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  class_path: pl_petune.methods.LoRA\n  init_args:\n    r: 0\n")
    rc = main(["fit", "--config", QUICK, "--config", str(recipe), "--run.out_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "r must be an integer >= 1, got 0" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("cls, kwargs, needle", [
    ("finetune", {"lr": -1.0}, "lr must be positive, got -1.0"),
    ("finetune", {"betas": (0.9, 1.0)}, "betas must be in [0, 1), got 1.0"),
    ("finetune", {"betas": (0.9,)}, "betas must have 2 values"),
    ("finetune", {"head_dropout": 1.0}, "head_dropout must be in [0, 1), got 1.0"),
    ("finetune", {"init_seed": -3}, "init_seed must be an integer in [0, 4294967295], got -3"),
    ("finetune", {"head": "big"}, "unknown head 'big'; known: mlp, linear, ehft, pooler_linear"),
    ("finetune", {"train_pooler": True}, "train_pooler true needs head pooler_linear"),
    ("lora", {"alpha": 0.0}, "alpha must be positive, got 0.0"),
    ("lora", {"r": True}, "r must be an integer >= 1, got True"),
    ("prefix", {"prefix_dropout": 1.0}, "prefix_dropout must be in [0, 1), got 1.0"),
    ("prefix", {"prefix_init_std": 0.01, "reparametrize": True}, "prefix_init_std 0.01 applies to the flat prefix"),
    ("adapter", {"reduction_factor": 0}, "reduction_factor must be an integer >= 1, got 0"),
    ("random", {"draw_from": "all"}, "unknown draw_from 'all'; known: backbone, encoder"),
])
def test_python_callers_get_the_same_checks_before_the_backbone_loads(cls, kwargs, needle, no_backbone):
    with pytest.raises(ConfigError) as err:
        get_method(cls)(task="cb", backbone="anything", **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_parsed_values_are_plain_builtins_in_hparams_and_checkpoints(tiny_bert, tmp_path):
    """The constrained types hand the method plain floats and ints, so hparams.yaml and a checkpoint loaded
    with weights_only=True hold builtins only."""
    import torch

    from pl_petune.lightning_cli import parse_only_cli

    cli = parse_only_cli(["fit", "--config", QUICK, "--model.class_path", M + "LoRA",
                          "--model.init_args.backbone", tiny_bert, "--model.init_args.r", "4"])
    args = cli.config.fit.model.init_args
    assert type(args.r) is int and type(args.lr) is float and type(args.betas[0]) is float
    model = get_method("lora")(**{k: v for k, v in vars(args).items()})
    for value in model.hparams.values():
        assert type(value) in (int, float, str, bool, tuple, list, type(None)), (value, type(value))
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.ckpt")
    assert torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]["r"] == 4
