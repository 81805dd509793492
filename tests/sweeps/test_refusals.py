"""Bad sweep files and runner options, as a user meets them: `petune sweep FILE ...` exits 2 with one line
naming the value and what is allowed, and writes nothing (no store, no plan, no log).

Each case is a row of docs/reliability.md (sweep files). The checks follow W&B's own sweep schema (the `sweeps` package's
config/schema.json): keys per distribution, q > 0, sigma >= 0, name pattern, run_cap > 0, hyperband fields.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pl_petune.cli import main

CMD = "command: ['${env}', '${interpreter}', -m, pl_petune, fit, --config, recipes/quickstart.yaml, '${args}']\n"


def _file(tmp_path: Path, body: str, method: str = "grid", raw: bytes | None = None) -> Path:
    path = tmp_path / "bad.yaml"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(f"method: {method}\n{CMD}{body}")
    return path


def _refused(tmp_path: Path, capsys, path: Path, *options: str) -> str:
    store = tmp_path / "out" / "results.sqlite"
    rc = main(["sweep", str(path), "--store", str(store), *options])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("petune sweep: error: "), err
    assert not (tmp_path / "out").exists()  # nothing written: no store, no plan, no logs
    return err


FILE_CASES = {
    "integer parameter name": ("parameters:\n  1: {values: [1, 2]}\n  b: {value: 1}\n",
                               "parameter name 1 is not allowed"),
    "parameter name with a space": ("parameters:\n  'data task': {value: cb}\n", "'data task' is not allowed"),
    "non-numeric probabilities": ("parameters:\n  a: {values: [1, 2], probabilities: [x, y]}\n",
                                  "'probabilities' must be 2 non-negative numbers"),
    "NaN probability": ("parameters:\n  a: {values: [1, 2], probabilities: [.nan, 1.0]}\n",
                        "'probabilities' must be 2 non-negative numbers"),
    "probabilities of another length": ("parameters:\n  a: {values: [1, 2], probabilities: [1.0]}\n",
                                        "one per value"),
    "q 0 in a grid": ("parameters:\n  a: {distribution: q_uniform, min: 0, max: 1, q: 0}\n", "q must be > 0"),
    "q -1 in a grid": ("parameters:\n  a: {distribution: q_uniform, min: 0, max: 1, q: -1}\n", "q must be > 0"),
    "q_uniform grid with no value": ("parameters:\n  a: {distribution: q_uniform, min: 1, max: 1, q: 1}\n",
                                     "has no grid values"),
    "q_uniform grid too long": ("parameters:\n  a: {distribution: q_uniform, min: 0, max: 1.0e+9, q: 1}\n",
                                "over the limit of 100000"),
    "key the distribution does not take": ("parameters:\n  a: {values: [1, 2], min: 0}\n",
                                           "(categorical) does not take min; categorical takes: values"),
    "mu on a uniform": ("parameters:\n  a: {distribution: uniform, min: 0, max: 1, mu: 0}\n", "does not take mu"),
    "min is text": ("parameters:\n  a: {min: low, max: 2}\n", "'min' must be a finite number, got 'low'"),
    "min is NaN": ("parameters:\n  a: {distribution: uniform, min: .nan, max: 1.0}\n", "'min' must be a finite number"),
    "min above max": ("parameters:\n  a: {min: 5, max: 2}\n", "min 5 is above max 2"),
    "repeated key": ("parameters:\n  a: {values: [1]}\n  a: {values: [2]}\n", "key 'a' appears twice"),
    "metric target text": ("metric: {name: dev/loss, goal: minimize, target: low}\nparameters:\n  a: {value: 1}\n",
                           "metric target must be a number"),
    "metric impute unknown": ("metric: {name: dev/loss, impute: mean}\nparameters:\n  a: {value: 1}\n",
                              "impute 'mean' unknown; allowed: latest, best, worst"),
    "early_terminate malformed": ("early_terminate: {type: median}\nparameters:\n  a: {value: 1}\n",
                                  "early_terminate must be a mapping with type: hyperband"),
    "early_terminate unknown key": ("early_terminate: {type: hyperband, min_iter: 3, speed: 2}\n"
                                    "parameters:\n  a: {value: 1}\n", "early_terminate has unknown key 'speed'"),
    "several metrics": ("metrics: [{name: a}, {name: b}]\nparameters:\n  a: {value: 1}\n", "'metrics' (several"),
    "controller unknown": ("controller: {type: remote}\nparameters:\n  a: {value: 1}\n", "controller must be"),
    "program not a string": ("program: [a, b]\nparameters:\n  a: {value: 1}\n", "program must be a string"),
    "command token a mapping": ("parameters:\n  a: {value: 1}\ncommand: [fit, {x: 1}]\n",
                                "command token {'x': 1} is not a string"),
    "unknown top-level key": ("paramters: {}\nparameters:\n  a: {value: 1}\n", "unknown top-level key(s) paramters"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_a_bad_sweep_file_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    body, match = FILE_CASES[case]
    if "command:" in body:  # the case replaces the command
        path = tmp_path / "bad.yaml"
        path.write_text("method: grid\n" + body)
    else:
        path = _file(tmp_path, body)
    err = _refused(tmp_path, capsys, path, "--check", "--quick")
    assert match in err, err


def test_a_random_sweep_with_q_minus_one_or_sigma_below_zero_is_refused_not_zero_runs(tmp_path, capsys):
    path = _file(tmp_path, "run_cap: 3\nparameters:\n  a: {distribution: q_normal, q: -1}\n", method="random")
    assert "q must be > 0" in _refused(tmp_path, capsys, path, "--check", "--quick")
    path = _file(tmp_path, "run_cap: 3\nparameters:\n  a: {distribution: normal, sigma: -1}\n", method="random")
    assert "sigma must be >= 0" in _refused(tmp_path, capsys, path, "--check", "--quick")


def test_method_custom_and_bayes_are_online_only(tmp_path, capsys):
    path = _file(tmp_path, "parameters:\n  a: {value: 1}\n", method="custom")
    assert "needs W&B's controller" in _refused(tmp_path, capsys, path, "--check", "--quick")


def test_a_non_utf8_file_is_one_line(tmp_path, capsys):
    path = _file(tmp_path, "", raw=b"method: grid\nparameters:\n  a: {values: [caf\xe9]}\n")
    err = _refused(tmp_path, capsys, path, "--check")
    assert "not UTF-8 text (byte 0xe9" in err


def test_a_grid_over_a_huge_integer_range_is_refused_at_once_in_bounded_memory(tmp_path, capsys):
    path = _file(tmp_path, "parameters:\n  run.seed: {min: 0, max: 1000000000000}\n  data.task: {value: cb}\n")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    err = _refused(tmp_path, capsys, path, "--check", "--quick")
    assert "the grid has 1000000000001 points (run.seed: 1000000000001)" in err and "set run_cap" in err
    assert time.time() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: nothing was enumerated


def test_a_huge_integer_range_with_a_run_cap_expands_lazily():
    from pl_petune.sweep import expand

    sweep = {"method": "grid", "run_cap": 3, "parameters": {"a": {"min": 0, "max": 10 ** 15},
                                                            "b": {"values": ["x", "y"]}}}
    t0 = time.time()
    assert expand(sweep) == [{"a": 0, "b": "x"}, {"a": 0, "b": "y"}, {"a": 1, "b": "x"}]
    assert time.time() - t0 < 1


OPTION_CASES = {
    "--count -3": (["--count", "-3"], "--count must be >= 1 run, got -3"),
    "--count 0": (["--count", "0"], "--count must be >= 1 run, got 0"),
    "--retries -1": (["--retries", "-1"], "--retries must be >= 0, got -1"),
    "--workers 0": (["--workers", "0"], "--workers must be >= 1, got 0"),
    "--workers not a number": (["--workers", "two"], "argument --workers: invalid int value: 'two'"),
    "--shard 2/2": (["--shard", "2/2"], "--shard '2/2': give i/n with 0 <= i < n"),
    "--shard text": (["--shard", "half"], "--shard 'half'"),
    "--chunk without --slurm": (["--chunk", "4"], "--chunk and --max-parallel apply to --slurm"),
    "--slurm with --workers": (["--workers", "2", "--slurm", "-p", "gpu"], "drop --workers, --devices and --shard"),
    "--slurm --chunk 0": (["--chunk", "0", "--slurm"], "--chunk must be >= 1"),
    "--slurm --max-parallel 0": (["--max-parallel", "0", "--slurm"], "--max-parallel must be >= 1"),
    "--devices empty": (["--devices", ","], "--devices ',' names no device"),
    "--quick without --check": (["--quick"], "--quick only applies to --check"),
    "unknown option": (["--wrokers", "2"], "unrecognized arguments: --wrokers 2"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_a_bad_option_is_refused_before_the_plan_is_written(case, tmp_path, capsys):
    options, match = OPTION_CASES[case]
    path = _file(tmp_path, "parameters:\n  a: {values: [1, 2]}\n", method="random")
    err = _refused(tmp_path, capsys, path, *options)
    assert match in err, err


def test_count_on_a_grid_is_refused(tmp_path, capsys):
    path = _file(tmp_path, "parameters:\n  a: {values: [1, 2]}\n")
    assert "--count applies to random sweeps" in _refused(tmp_path, capsys, path, "--count", "3")


def test_a_random_run_cap_beyond_the_limit_is_refused(tmp_path, capsys):
    path = _file(tmp_path, "run_cap: 100000000\nparameters:\n  a: {values: [1, 2]}\n", method="random")
    assert "give between 1 and 100000" in _refused(tmp_path, capsys, path, "--check", "--quick")


def test_exit_code_two_and_one_line_from_the_installed_command(tmp_path):
    path = _file(tmp_path, "parameters:\n  a: {distribution: q_uniform, min: 0, max: 1, q: 0}\n")
    res = subprocess.run([sys.executable, "-m", "pl_petune", "sweep", str(path), "--check", "--quick"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "q must be > 0" in res.stderr
    assert "Traceback" not in res.stderr


def test_early_terminate_is_named_online_only_and_the_check_goes_on(tmp_path, capsys, in_root, tiny_bert,
                                                                     data_dir):
    path = _file(tmp_path, "early_terminate: {type: hyperband, min_iter: 3}\nparameters:\n"
                           f"  data.task: {{value: cb}}\n  run.seed: {{values: [1, 2]}}\n"
                           f"  model.init_args.backbone: {{value: {tiny_bert}}}\n"
                           f"  data.data_dir: {{value: {data_dir}}}\n")
    assert main(["sweep", str(path), "--check", "--quick", "--store", str(tmp_path / "s.sqlite")]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "early_terminate" in ln)
    assert "online only, ignored by petune sweep" in line and "2 runs" in err


@pytest.mark.parametrize("kind, extra, check", [
    ("inv_log_uniform", "min: 0, max: 2", lambda x: 0.13 < x <= 1.0),
    ("inv_log_uniform_values", "min: 0.01, max: 1", lambda x: 0.01 <= x <= 1.0),
    ("q_log_uniform", "min: 0, max: 3, q: 1", lambda x: x in range(1, 21) and isinstance(x, int)),
    ("categorical_w_probabilities", "values: [a, b], probabilities: [0.0, 1.0]", lambda x: x == "b"),
])
def test_the_other_distributions_w_and_b_documents_are_drawn(kind, extra, check, tmp_path):
    import yaml

    from pl_petune.sweep import expand, validate_sweep

    sweep = yaml.safe_load(f"method: random\nrun_cap: 50\nprogram: x.py\nparameters:\n"
                           f"  a: {{distribution: {kind}, {extra}}}\n")
    validate_sweep(sweep)
    draws = [r["a"] for r in expand(sweep, seed=1)]
    assert len(draws) == 50 and all(check(x) for x in draws), draws[:5]
    assert draws == [r["a"] for r in expand(sweep, seed=1)]  # same seed, same draws


@pytest.mark.parametrize("body", ["parameters:\n  run.name: {value: null}\n",
                                  "parameters:\n  data.train_limit: {values: [32, null]}\n",
                                  "parameters:\n  config: {values: [{trainer: {max_epochs: null}}]}\n"])
def test_a_null_value_is_refused_since_the_agent_renders_it_as_the_text_none(body, tmp_path, capsys):
    assert "holds null, which the agent renders as the text 'None'" in _refused(
        tmp_path, capsys, _file(tmp_path, body), "--check", "--quick")


def test_a_store_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    path = _file(tmp_path, "parameters:\n  a: {values: [1, 2]}\n")
    rc = main(["sweep", str(path), "--store", str(tmp_path / "afile" / "results.sqlite")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "afile' is a file, not a folder" in err


def test_slurm_without_sbatch_is_one_line_and_submits_nothing(in_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    store = tmp_path / "out" / "results.sqlite"
    assert main(["sweep", "sweeps/smoke.yaml", "--store", str(store), "--slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--slurm needs SLURM's sbatch on PATH" in err
    assert not store.parent.exists()  # refused before the plan was written
