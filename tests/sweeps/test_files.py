"""Every file in sweeps/ is a valid W&B sweep whose runs parse with the real CLI (F7, F8)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from pl_petune.sweep import SweepError, expand, load_sweep, logged_metrics, plan

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def _class_paths(value, out):
    if isinstance(value, dict):
        if "class_path" in value:
            out.add(value["class_path"])
        for v in value.values():
            _class_paths(v, out)
    elif isinstance(value, list):
        for v in value:
            _class_paths(v, out)
    return out


def _missing_methods(sweep) -> list[str]:
    paths = _class_paths(sweep["parameters"], set())
    for name, spec in sweep["parameters"].items():
        if name == "model.class_path":
            paths |= set(spec.get("values", [spec.get("value")]))
    missing = []
    for path in sorted(p for p in paths if p and p.startswith("pl_petune.")):
        module, _, cls = path.rpartition(".")
        if not hasattr(importlib.import_module(module), cls):
            missing.append(path)
    return missing


def test_there_are_sweep_files():
    assert {p.stem for p in SWEEPS} >= {"smoke", "revisiting_petuning", "revisiting_seeds_init",
                                        "revisiting_seeds_data_order"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_is_valid_and_its_runs_parse(path, fit_parser, in_root):
    sweep = load_sweep(path)  # structure: method, parameters, metric, command
    missing = _missing_methods(sweep)
    if missing:
        pytest.skip(f"{path.name} names methods that are not in pl_petune yet: {', '.join(missing)}")
    assert sweep["method"] in ("grid", "random") and sweep.get("metric")
    assert "fit" in sweep["command"] and "${args}" in sweep["command"]
    # Quick in CI: the runs that give every value of every parameter to the parser (all runs: -m slow).
    runs = plan(sweep, where=path.name, parser=fit_parser, quick=True)
    assert runs and all(len(r.key) == 16 for r in runs)
    # the metric is one the modules log for every task of the sweep, with the matching goal
    tasks = {r.task for r in runs}
    logged = logged_metrics(tasks)
    assert sweep["metric"]["name"] in logged
    assert sweep["metric"]["goal"] == ("maximize" if logged[sweep["metric"]["name"]] else "minimize")


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_run_of_every_sweep_file_parses(path, fit_parser, in_root):
    sweep = load_sweep(path)
    if _missing_methods(sweep):
        pytest.skip("methods missing")
    runs = plan(sweep, where=path.name, parser=fit_parser)
    assert len(runs) == len(expand(sweep)) and len({r.key for r in runs}) == len(runs)


def test_paper_sweeps_use_the_twenty_released_seeds_and_the_two_seed_arms():
    seeds = [1111, 2222, 3333, 4444, 5555, 6666, 7777, 8888, 9999, 101010, 111111, 222222, 333333, 444444,
             555555, 666666, 777777, 888888, 999999, 10101010]
    main = yaml.safe_load((ROOT / "sweeps/revisiting_petuning.yaml").read_text())
    assert main["parameters"]["run.seed"]["values"] == seeds
    init = yaml.safe_load((ROOT / "sweeps/revisiting_seeds_init.yaml").read_text())["parameters"]
    order = yaml.safe_load((ROOT / "sweeps/revisiting_seeds_data_order.yaml").read_text())["parameters"]
    assert init["model.init_args.init_seed"]["values"] == seeds and init["data.data_seed"] == {"value": 1111}
    assert order["data.data_seed"]["values"] == seeds and order["model.init_args.init_seed"] == {"value": 1111}
    assert "run.seed" not in init and "run.seed" not in order
    assert init["config"] == order["config"]


def test_the_two_seed_arms_share_their_common_point(fit_parser, in_root):
    """(init 1111, data 1111) is one run: the same run key from both files, so it is trained once."""
    keys = []
    for name, vary in (("revisiting_seeds_init", "model.init_args.init_seed"),
                       ("revisiting_seeds_data_order", "data.data_seed")):
        sweep = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
        if _missing_methods(sweep):
            pytest.skip("methods missing")
        sweep["parameters"][vary] = {"values": [1111, 2222]}
        sweep["parameters"]["config"]["values"] = sweep["parameters"]["config"]["values"][:1]
        keys.append([r.key for r in plan(sweep, parser=fit_parser)])
    assert keys[0][0] == keys[1][0]  # the shared point
    assert keys[0][1] != keys[1][1]  # init 2222 vs data 2222 are different runs


def _tiny_sweep(**params):
    base = {"model.init_args.lr": {"values": [1.0e-4, 2.0e-4]}, "run.seed": {"value": 1}}
    return {"method": "grid", "metric": {"name": "dev/f1_macro", "goal": "maximize"},
            "command": ["${env}", "${interpreter}", "-m", "pl_petune", "fit", "--config", "recipes/quickstart.yaml",
                        "${args}"], "parameters": {**base, **params}}


def test_a_misspelled_key_fails_before_anything_trains(fit_parser, in_root):
    with pytest.raises(SweepError, match=r"run 0 .*lrr"):
        plan(_tiny_sweep(**{"model.init_args.lrr": {"value": 0.1}}), parser=fit_parser)


def test_a_value_of_the_wrong_type_fails(fit_parser, in_root):
    with pytest.raises(SweepError, match=r"run 0 .*max_epochs"):
        plan(_tiny_sweep(**{"trainer.max_epochs": {"value": "many"}}), parser=fit_parser)


def test_an_unknown_method_class_fails_naming_known_ones(fit_parser, in_root):
    with pytest.raises(SweepError, match=r"pl_petune.methods.Nope.*FullFinetune"):
        plan(_tiny_sweep(**{"model.class_path": {"value": "pl_petune.methods.Nope"}}), parser=fit_parser)


def test_swept_values_land_in_the_parsed_config(fit_parser, in_root):
    sweep = {**_tiny_sweep(**{"data.task": {"values": ["cb", "rte"]}}), "metric": {"name": "dev/loss"}}
    runs = plan(sweep, parser=fit_parser)
    assert [r.task for r in runs] == ["cb", "cb", "rte", "rte"]
    cfg = fit_parser.parse(runs[1].command[runs[1].command.index("fit"):])
    assert cfg.fit.model.init_args.lr == 2.0e-4 and cfg.fit.model.init_args.task == "cb"
    assert len({r.key for r in runs}) == 4


@pytest.mark.parametrize("metric, match", [
    ({"name": "dev/acc", "goal": "maximize"}, "not logged by every task.*dev/f1_macro"),
    ({"name": "dev/f1_macro", "goal": "minimize"}, "goal must be 'maximize'"),
    ({"name": "dev/loss", "goal": "maximize"}, "goal must be 'minimize'"),
])
def test_metric_must_be_logged_with_the_right_goal(metric, match, fit_parser, in_root):
    with pytest.raises(SweepError, match=match):
        plan({**_tiny_sweep(), "metric": metric}, parser=fit_parser)


def test_metric_of_a_multi_task_sweep_must_be_logged_by_all(fit_parser, in_root):
    sweep = _tiny_sweep(**{"data.task": {"values": ["cb", "rte"]}})  # rte logs no f1_macro
    with pytest.raises(SweepError, match=r"\(cb, rte\).*dev/loss"):
        plan(sweep, parser=fit_parser)


def test_command_order_is_subcommand_then_config_then_overrides(fit_parser, in_root):
    sweep = {**_tiny_sweep(), "command": ["${env}", "${interpreter}", "-m", "pl_petune", "fit", "${args}",
                                          "--config", "recipes/quickstart.yaml"]}
    with pytest.raises(SweepError, match="'fit' must be followed by --config"):
        plan(sweep, parser=fit_parser)
