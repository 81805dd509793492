"""Parameter accounting: the module-wise paper's %Param on BERT-base, and ``petune params``."""

from __future__ import annotations

import json

import pytest

from pl_petune.cli import UsageError
from pl_petune.cli import main as petune
from pl_petune.params import count

# AkbarTajari et al. (2022), %Param column, BERT-base (shared REFERENCE §7); denominator = the whole BertModel.
PAPER_PERCENT = [
    ("mha", {}, 25.89),
    ("ffn", {}, 51.76),
    ("layernorm", {}, 0.03),
    ("layernorm", {"variant": "attention"}, 0.02),
    ("layernorm", {"variant": "ffn"}, 0.02),
    ("layernorm", {"layers": [5]}, 0.003),
    ("bitfit", {}, 0.09),
]


@pytest.mark.parametrize("method,kwargs,percent", PAPER_PERCENT)
def test_bert_base_reproduces_the_module_wise_param_column(method, kwargs, percent):
    report = count(method, "config:bert-base", **kwargs)
    assert report["total_params"] == 109_482_240  # BertModel() with its pooler, nothing added
    digits = len(str(percent).split(".")[1])
    assert round(report["trainable_backbone_percent"], digits) == percent


def test_random_defaults_to_the_layernorm_budget_and_head_counts_in_trainable():
    ln = count("layernorm", "config:bert-base")
    rnd = count("random", "config:bert-base", init_seed=3)
    # 12 layers x 2 LayerNorms x (gain, bias) x 768
    assert rnd["trainable_backbone_params"] == ln["trainable_backbone_params"] == 12 * 2 * 2 * 768
    assert rnd["trainable_params"] == ln["trainable_params"] == ln["trainable_backbone_params"] + ln["head_params"]


def test_pet_layers_are_counted_apart_from_the_denominator():
    base = count("frozen", "config:bert-base")
    lora = count("lora", "config:bert-base", r=8, targets=["q", "v"])
    assert lora["total_params"] == base["total_params"]
    assert lora["added_params"] == 12 * 2 * (8 * 768 + 768 * 8)  # A (r x d) and B (d x r), q and v, 12 layers
    assert lora["trainable_params"] == lora["added_params"] + lora["head_params"]


def test_params_command_prints_every_method_with_the_denominator(capsys):
    assert petune(["params", "--all", "--bert-base"]) == 0
    out = capsys.readouterr().out
    from pl_petune.methods import METHODS

    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {m for m, c in METHODS.items() if not getattr(c, "requires_encoder_decoder", False)} <= rows
    assert "denominator" in out and "109,482,240" in out


def test_params_command_json_and_overrides(capsys):
    assert petune(["params", "--method", "lora", "--bert-base", "--set", "r=4", "--set", "targets=[q,k,v,o]",
                   "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added_params"] == 12 * 4 * (4 * 768 * 2)


@pytest.mark.parametrize("argv,needle", [
    (["--method", "lorra"], "'lorra'"),
    (["--method", "lora", "--set", "rank=4"], "'rank'"),
    (["--method", "bitfit", "--set", "variant=odd"], "'odd'"),
    (["--method", "lora", "--set", "r"], "KEY=VALUE"),
])
def test_params_command_refuses_bad_input_in_one_line(argv, needle, capsys):
    assert petune(["params", *argv, "--bert-base"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_count_raises_usage_error():
    with pytest.raises(UsageError, match="known: .*adapter"):
        count("nope", "config:bert-base")


def test_dotted_overrides_like_fit_and_a_recipe(capsys):
    """`petune params` takes fit's spelling: --config RECIPE and --model.init_args.KEY VALUE."""
    import json

    from pl_petune.cli import main

    def report(*argv):
        assert main(["params", "--bert-base", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    dotted = report("--method", "lora", "--model.init_args.r", "4", "--model.init_args.targets=[q,k,v]")
    old = report("--method", "lora", "--set", "r=4", "--set", "targets=[q,k,v]")
    default = report("--method", "lora")
    assert dotted["trainable_params"] == old["trainable_params"] != default["trainable_params"]
    recipe = report("--config", "methods/lora")
    from_recipe = report("--config", "methods/lora", "--model.init_args.r", "2")
    assert from_recipe["method"] == "lora" and from_recipe["trainable_params"] < recipe["trainable_params"]
    assert main(["params", "--method", "lora", "--model.init_args.rank", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.init_args.rank" in err and "allowed: r, alpha" in err
    assert main(["params", "--method", "lora", "--trainer.max_epochs", "3"]) == 2
    assert "'--trainer.max_epochs'" in capsys.readouterr().err
