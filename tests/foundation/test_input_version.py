"""A task whose input text changed gets new run keys, so a complete run of the old text is never skipped as
if it were a run of the new one (COPA's connective and WiC's template follow PETuning since input_version 2)."""

from __future__ import annotations

import dataclasses

from pl_petune import tasks
from pl_petune.lightning_cli import parse_only
from pl_petune.identity import apply_protocol, identity
from pl_petune.records import run_key


def _identity(task: str) -> dict:
    cfg = parse_only(["fit", "--config", "recipes/quickstart.yaml", "--data.task", task])["fit"]
    apply_protocol(cfg)
    return identity(cfg)


def test_changed_tasks_carry_their_input_version_and_others_keep_their_keys():
    assert _identity("copa")["data.input_version"] == 2
    assert _identity("wic")["data.input_version"] == 2
    assert "data.input_version" not in _identity("cb")  # unchanged tasks keep the keys their stores hold


def test_bumping_a_task_s_input_version_changes_its_run_key(monkeypatch):
    before = run_key(_identity("copa"))
    spec = tasks.get_task("copa")
    monkeypatch.setitem(tasks.TASKS, "copa", dataclasses.replace(spec, input_version=3))
    assert run_key(_identity("copa")) != before


def test_callbacks_and_their_arguments_identify_a_run():
    """FT and LP-FT differ only by a HeadWarmStart callback: they must never share a run folder or store row."""
    from pl_petune.identity import run_key_for

    from pl_petune.packaged import config_args

    ft = run_key_for(["fit", *config_args("recipes/analyses/rte_ood_ft.yaml")])
    lpft = run_key_for(["fit", *config_args("recipes/analyses/rte_ood_lpft.yaml")])
    base = ["fit", *config_args("recipes/methods/lpft.yaml")]
    other = run_key_for(base + ["--trainer.callbacks.init_args.stage1_lr", "0.002"])
    assert len({ft, lpft, run_key_for(base), other}) == 4
