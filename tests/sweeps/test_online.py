"""The online path: what `wandb agent` runs works outside a checkout, and an online grid's holes can be filled
offline from the same file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pl_petune.cli import main

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def _agent_argv(sweep: dict, config: dict) -> list[str]:
    """The command `wandb agent` builds for one run, with wandb's own helpers and substitution (its
    ``_command_run``), except ``${interpreter}``: this test's Python instead of `python` from PATH."""
    from wandb.sdk.launch.sweeps import utils

    command = utils.create_sweep_command(list(sweep["command"]))
    variables = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in config.items()}})
    variables.update(interpreter=[sys.executable], program=[sweep["program"]], env=["/usr/bin/env"])
    out: list[str] = []
    for c in map(str, command):
        out += (variables.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_files_do_not_name_a_checkout_path_as_their_program(path):
    sweep = yaml.safe_load(path.read_text())
    assert "${program}" not in sweep["command"] and not str(sweep["program"]).endswith(".py")
    assert sweep["command"][1:4] == ["${interpreter}", "-m", "pl_petune"]


def test_the_agent_command_of_a_sweep_file_parses_in_a_folder_without_a_checkout(tmp_path, data_dir):
    from pl_petune.sweep import expand, load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    argv = _agent_argv(sweep, expand(sweep)[0]) + ["--print_config"]
    assert "recipes/quickstart.yaml" in argv  # a checkout-relative path, as written in the file
    res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PETUNE_DATA_DIR": data_dir})
    assert res.returncode == 0, res.stderr[-1500:]
    printed = yaml.safe_load(res.stdout)
    assert printed["data"]["task"] == "cb" and printed["run"]["seed"] == 1111
    assert printed["model"]["class_path"].endswith("FullFinetune")
    assert not any(tmp_path.iterdir())  # parsing wrote nothing into the agent's folder


def test_petune_sweep_finds_a_packaged_sweep_file_and_its_recipes_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "smoke", "--check", "--quick", "--store", str(tmp_path / "s.sqlite")]) == 0
    err = capsys.readouterr().err
    assert "smoke: 2 runs; every command parses" in err  # --quick: the 2 runs that give every value once


def test_resolve_configs_leaves_files_and_yaml_text_alone(tmp_path, monkeypatch):
    from pl_petune.packaged import resolve_configs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("trainer: {max_epochs: 1}\n")
    argv = ["fit", "--config", "recipes/quickstart.yaml", "--config=mine.yaml", "--config={trainer: {max_epochs: 2}}",
            "--config", "recipes/none.yaml"]
    out = resolve_configs(argv)
    assert Path(out[2]).is_file() and Path(out[2]).name == "quickstart.yaml" and Path(out[2]).is_absolute()
    assert out[3:] == argv[3:]  # an existing file, YAML text and an unknown recipe stay as given


class _Run:
    def __init__(self, path, summary):
        self.path, self.summary = path, summary


class _Api:
    """wandb.Api's surface that records_from_wandb uses: sweep(path).runs."""

    def __init__(self, runs):
        self._runs = runs

    def sweep(self, path):
        return type("S", (), {"runs": self._runs})()

    def runs(self, path):
        return self._runs


def test_fill_from_wandb_runs_only_the_grid_points_the_online_sweep_left_as_holes(in_root, fit_parser, monkeypatch,
                                                                                  tmp_path, capsys):
    import wandb

    from pl_petune.sweep import load_sweep, plan
    from pl_petune.wandb_source import SUMMARY_KEY, summary_value

    planned = plan(load_sweep("sweeps/smoke.yaml"), parser=fit_parser)
    finished, crashed, failed, never = planned

    def record(run):
        return {"schema": 1, "run_key": run.key, "status": "complete", "task": "cb", "method": run.method,
                "protocol": "train_split", "primary_metric": "f1_macro", "test_metrics": {"test/f1_macro": 0.5},
                "init_seed": 1111, "data_seed": 1111, "higher_is_better": True}

    runs = [_Run(["e", "p", "a"], {SUMMARY_KEY: summary_value(record(finished))}),
            _Run(["e", "p", "b"], {}),  # crashed before its record: a hole
            _Run(["e", "p", "c"], {SUMMARY_KEY: summary_value({**record(failed), "status": "failed"})})]
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: _Api(runs))
    assert main(["sweep", "sweeps/smoke.yaml", "--check", "--fill-from-wandb", "e/p/sweepid",
                 "--store", str(tmp_path / "s.sqlite")]) == 0
    out = capsys.readouterr()
    assert "W&B e/p/sweepid: 1 of 4 runs complete online; 3 left to fill" in out.err
    assert sorted(line.split()[1] for line in out.out.splitlines()) == sorted(r.key for r in (crashed, failed, never))


def test_fill_from_wandb_with_a_malformed_path_is_one_line_before_any_network_call(in_root, tmp_path, capsys):
    assert main(["sweep", "sweeps/smoke.yaml", "--check", "--fill-from-wandb", "nope",
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID" in err
