"""Base + method recipes resolve to exactly the configs (and run keys) of the whole-file recipes they replaced.

``fixtures/resolved_before.json`` was made by ``fixtures/snapshot_resolved.py`` from the whole-file recipes of
commit ff1b09a, before the split: per recipe, the hash of the fully parsed ``fit`` config (every key but
``config``, after the tied seed and the monitor's mode) and its run key; per sweep file, the same for every run in
run order. Each old recipe path still exists (a cell keeps its name; its base is named in its header), so the
new argv is :func:`pl_petune.packaged.config_args` of the old path. The default suite checks a spread sample;
``-m slow`` checks every recipe and every run of every sweep.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).with_name("fixtures")
BEFORE = json.loads((FIXTURES / "resolved_before.json").read_text())
_spec = importlib.util.spec_from_file_location("snapshot_resolved", FIXTURES / "snapshot_resolved.py")
snapshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snapshot)

RECIPES = sorted(BEFORE["recipes"])
SWEEPS = sorted(BEFORE["sweeps"])
# Every non-paper recipe, and every 12th paper cell (each table and protocol is hit): the fast sample.
SAMPLE = [r for i, r in enumerate(RECIPES) if not r.startswith("recipes/papers/") or i % 12 == 0]


@pytest.fixture(scope="module")
def fit_parser():
    from pl_petune.sweep import FitParser

    return FitParser()


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name recipes relative to the repository root


def _check_recipe(fit_parser, old: str) -> None:
    from pl_petune.packaged import config_args

    assert (ROOT / old).is_file(), f"{old} is gone: an old recipe path must keep working"
    argv = ["fit", *config_args(old)]
    assert snapshot.one(fit_parser, argv) == tuple(BEFORE["recipes"][old]), (
        f"{' '.join(argv)} resolves to another config than the whole-file {old} did")


@pytest.mark.parametrize("old", SAMPLE)
def test_recipe_resolves_as_before(old, fit_parser, in_root):
    _check_recipe(fit_parser, old)


@pytest.mark.slow
@pytest.mark.parametrize("old", sorted(set(RECIPES) - set(SAMPLE)))
def test_every_other_recipe_resolves_as_before(old, fit_parser, in_root):
    _check_recipe(fit_parser, old)


def test_the_fixture_covers_every_sweep_and_the_running_study():
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "sweeps").rglob("*.yaml"))
    assert SWEEPS == on_disk
    assert {"sweeps/cpu_repro.yaml", "sweeps/emerging_peft.yaml"} <= set(SWEEPS)
    assert sum(len(BEFORE["sweeps"][s]["keys"]) for s in SWEEPS) > 5000


def _sweep_runs(fit_parser, rel: str, every: int = 1) -> tuple[list[str], list[str]]:
    from pl_petune.sweep import expand, load_sweep
    from pl_petune.sweep.command import fit_argv, render_command

    sweep = load_sweep(ROOT / rel)
    configs = expand(sweep)
    assert len(configs) == len(BEFORE["sweeps"][rel]["keys"]), f"{rel}: the number of runs changed"
    hashes, keys = [], []
    for i, config in enumerate(configs):
        if i % every:
            continue
        h, k = snapshot.one(fit_parser, fit_argv(render_command(sweep, config, interpreter="python")))
        hashes.append(h)
        keys.append(k)
    return hashes, keys


@pytest.mark.parametrize("rel", SWEEPS, ids=lambda s: s.removeprefix("sweeps/"))
def test_sweep_runs_resolve_as_before_sample(rel, fit_parser, in_root):
    """Every 40th run of each sweep (the running study's two sweeps: every run): same config, same key."""
    every = 1 if rel in ("sweeps/cpu_repro.yaml", "sweeps/emerging_peft.yaml") else 40
    hashes, keys = _sweep_runs(fit_parser, rel, every)
    assert keys == BEFORE["sweeps"][rel]["keys"][::every]
    assert hashes == BEFORE["sweeps"][rel]["each"][::every]


@pytest.mark.slow
@pytest.mark.parametrize("rel", SWEEPS, ids=lambda s: s.removeprefix("sweeps/"))
def test_every_sweep_run_resolves_as_before(rel, fit_parser, in_root):
    hashes, keys = _sweep_runs(fit_parser, rel)
    assert keys == BEFORE["sweeps"][rel]["keys"]
    assert hashlib.sha256("".join(hashes).encode()).hexdigest()[:16] == BEFORE["sweeps"][rel]["resolved"]


def test_run_keys_come_from_identity_on_a_sample(fit_parser, in_root):
    """The keys above are pl_petune.identity's: recompute a few from the identity dict itself."""
    from pl_petune.identity import apply_protocol, identity
    from pl_petune.packaged import config_args
    from pl_petune.records import run_key

    for old in ("recipes/methods/lora.yaml", "recipes/papers/ehft/table1/cb_ehft_lora.yaml",
                "recipes/papers/revisiting/table2/parity/copa_finetune.yaml", "recipes/repro/cpu_base.yaml"):
        fit = fit_parser.parse(["fit", *config_args(old)])["fit"]
        apply_protocol(fit)
        assert run_key(identity(fit)) == BEFORE["recipes"][old][1], old


@pytest.mark.parametrize("old", ["recipes/methods/lpft.yaml", "recipes/analyses/rte_ood_ehft_lora.yaml",
                                 "recipes/papers/ehft/table1/copa_ehft_prefix.yaml",
                                 "recipes/papers/modulewise/table3/cola_layer05.yaml"])
def test_the_fit_cli_parser_composes_as_the_sweep_parser(old, in_root):
    """The sweep's reused parser and the one `petune fit` builds for its own argv (a fresh CLI each run) agree on
    the composed config: both give the whole-file recipe's config and key."""
    from pl_petune.identity import run_key_for
    from pl_petune.lightning_cli import parse_only
    from pl_petune.packaged import config_args

    argv = ["fit", *config_args(old)]
    cfg = parse_only(argv)
    key = run_key_for(argv, config=cfg)
    assert (snapshot.resolved_sha(cfg["fit"]), key) == tuple(BEFORE["recipes"][old])
