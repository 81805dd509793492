"""Sweep expansion and command rendering against W&B's documented behaviour (no training, no parser)."""

from __future__ import annotations

import json

import pytest

from pl_petune.sweep import SweepError, command_args, covering, expand, render_command, seed_major, validate_sweep

CMD = ["${env}", "${interpreter}", "-m", "pl_petune", "fit", "--config", "r.yaml", "${args}"]


def grid(**params):
    return {"method": "grid", "command": CMD, "parameters": params}


def test_grid_is_the_product_in_sorted_name_order_last_name_fastest():
    # W&B sorts parameter names and iterates itertools.product over them: the last name varies fastest.
    runs = expand(grid(zeta={"values": [1, 2]}, alpha={"values": ["x", "y", "z"]}))
    assert [(r["alpha"], r["zeta"]) for r in runs] == [
        ("x", 1), ("x", 2), ("y", 1), ("y", 2), ("z", 1), ("z", 2)]


def test_first_run_of_a_one_parameter_grid_is_its_first_value():
    # The docstring example of sweeps.grid_search_next_runs: values [1, 2, 3] -> first run a == 1.
    assert expand(grid(a={"values": [1, 2, 3]}))[0] == {"a": 1}


def test_constants_join_every_run_and_do_not_multiply():
    runs = expand(grid(a={"values": [1, 2]}, c={"value": "same"}))
    assert runs == [{"a": 1, "c": "same"}, {"a": 2, "c": "same"}]


def test_nested_parameters_become_one_dict_value_and_sort_inside():
    runs = expand(grid(opt={"parameters": {"name": {"values": ["adam", "sgd"]}, "lr": {"values": [0.1, 0.2]}}},
                       b={"value": 0}))
    # Inside `opt`, lr sorts before name, so name varies fastest.
    assert [r["opt"] for r in runs] == [{"lr": 0.1, "name": "adam"}, {"lr": 0.1, "name": "sgd"},
                                        {"lr": 0.2, "name": "adam"}, {"lr": 0.2, "name": "sgd"}]
    assert all(r["b"] == 0 for r in runs)


def test_repeated_grid_points_run_once_integral_floats_equal_ints():
    # W&B hashes values with 3.0 == 3, and skips points it has seen.
    assert [r["a"] for r in expand(grid(a={"values": [1, 1.0, 2, 1]}))] == [1, 2]


def test_int_uniform_and_q_uniform_grids():
    assert [r["n"] for r in expand(grid(n={"min": 1, "max": 3}))] == [1, 2, 3]  # inferred int_uniform, max included
    q = [r["q"] for r in expand(grid(q={"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}))]
    assert q == [0.0, 0.25, 0.5, 0.75]  # numpy arange: max excluded, as W&B


def test_run_cap_cuts_a_grid_in_order():
    assert [r["a"] for r in expand({**grid(a={"values": [1, 2, 3, 4]}), "run_cap": 2})] == [1, 2]


@pytest.mark.parametrize("param, match", [
    ({"distribution": "uniform", "min": 0.0, "max": 1.0}, "grid allows: constant, categorical"),
    ({"values": [1, 2], "probabilities": [0.5, 0.5]}, "probabilities are not allowed in a grid"),
])
def test_grid_refuses_what_it_cannot_enumerate(param, match):
    with pytest.raises(SweepError, match=match):
        expand(grid(a=param))


def test_random_is_reproducible_from_its_seed_and_respects_bounds():
    sweep = {"method": "random", "command": CMD, "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
        "n": {"distribution": "int_uniform", "min": 2, "max": 5},
        "m": {"values": ["a", "b"], "probabilities": [1.0, 0.0]},
        "k": {"value": 7}}}
    a, b, c = expand(sweep, count=30, seed=3), expand(sweep, count=30, seed=3), expand(sweep, count=30, seed=4)
    assert a == b and a != c and len(a) == 30
    assert all(1e-5 <= r["lr"] <= 1e-2 and r["n"] in (2, 3, 4, 5) and isinstance(r["n"], int) for r in a)
    assert {r["m"] for r in a} == {"a"} and {r["k"] for r in a} == {7}
    assert len({r["n"] for r in a}) > 1


def test_random_needs_a_run_count_and_bayes_needs_wandb():
    with pytest.raises(SweepError, match="--count N or run_cap"):
        expand({"method": "random", "parameters": {"a": {"values": [1]}}})
    assert len(expand({"method": "random", "run_cap": 4, "parameters": {"a": {"values": [1]}}})) == 4
    with pytest.raises(SweepError, match="offline methods: grid, random"):
        expand({"method": "bayes", "parameters": {"a": {"values": [1]}}, "metric": {"name": "x"}})


def test_args_render_exactly_as_the_wandb_agent():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    config = {"b.lr": 1e-05, "a": True, "c": "x y", "d": False, "e": {"k": 1}, "f": [1, 2]}
    ours = command_args(config)
    theirs = create_sweep_command_args({"args": {k: {"value": config[k]} for k in sorted(config)}})
    for macro in ("args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags", "args_json",
                  "args_append_hydra", "args_override_hydra"):
        assert ours[macro] == theirs[macro], macro
    assert ours["args"][:2] == ["--a=True", "--b.lr=1e-05"]


def test_command_macros():
    sweep = {"program": "train.py", "command": ["${env}", "${interpreter}", "${program}", "--home=${envvar:HOME_X}",
                                                "${args_no_hyphens}", "${args_json}", "${args_json_file}"]}
    cmd = render_command(sweep, {"x": 1, "a": "b"}, json_file="/tmp/a.json", interpreter="/py",
                         env={"HOME_X": "/h"})
    assert cmd == ["/usr/bin/env", "/py", "train.py", "--home=/h", "a=b", "x=1", json.dumps({"a": "b", "x": 1}),
                   "/tmp/a.json"]
    # No command: W&B's default ${env} ${interpreter} ${program} ${args}, python from PATH.
    assert render_command({"program": "t.py"}, {"a": 1}) == ["/usr/bin/env", "python", "t.py", "--a=1"]


@pytest.mark.parametrize("change, match", [
    ({"paramters": {}}, "unknown top-level key.*paramters.*allowed: method, parameters"),
    ({"method": "grdi"}, "method 'grdi' unknown; allowed: grid, random, bayes"),
    ({"metric": {"name": "dev/loss", "goal": "min"}}, "goal 'min' unknown; allowed: minimize, maximize"),
    ({"command": ["fit", "${argz}"]}, r"unknown command macro '\$\{argz\}'"),
    ({"command": ["${program}"]}, "sets no 'program'"),
    ({"parameters": {"a": {"values": []}}}, "'values' must be a non-empty list"),
    ({"parameters": {"a": {"valeus": [1]}}}, "unknown key.*valeus.*allowed: value, values"),
    ({"parameters": {"a": {"distribution": "gauss"}}}, "distribution 'gauss'; known: constant"),
    ({"parameters": {"a": {"values": [1, 2], "probabilities": [0.9, 0.3]}}}, "summing to 1"),
    ({"run_cap": 0}, "run_cap must be a positive integer"),
])
def test_validation_names_the_bad_value_and_the_choices(change, match):
    sweep = {**grid(a={"values": [1]}), **change}
    with pytest.raises(SweepError, match=match):
        validate_sweep(sweep)


def test_covering_gives_every_value_in_few_runs():
    configs = expand(grid(seed={"values": list(range(20))}, cell={"values": ["a", "b", "c"]}))
    picked = covering(configs)
    assert len(picked) == 20
    assert {configs[i]["seed"] for i in picked} == set(range(20))
    assert {configs[i]["cell"] for i in picked} == {"a", "b", "c"}


def test_seed_major_runs_every_cell_of_a_seed_before_the_next_seed():
    from pl_petune.sweep import PlannedRun

    configs = expand(grid(**{"model.class_path": {"values": ["A", "B"]}, "run.seed": {"values": [1, 2, 3]}}))
    runs = seed_major([PlannedRun(i, c, []) for i, c in enumerate(configs)])
    seeds = [r.config["run.seed"] for r in runs]
    assert seeds == [1, 1, 2, 2, 3, 3]
    # after 2k runs, both methods share k seeds (paired blocks for the t-tests)
    for k in (1, 2, 3):
        done = runs[: 2 * k]
        assert {r.config["run.seed"] for r in done if r.config["model.class_path"] == "A"} == \
               {r.config["run.seed"] for r in done if r.config["model.class_path"] == "B"}
