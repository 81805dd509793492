"""W&B as a report source: `petune fit` with a WandbLogger logs its whole record into the run summary, and
`petune report --wandb` reads the same records back (merged with stores, one per run key)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pl_petune.cli import main
from pl_petune.store import Store
from pl_petune.wandb_source import SUMMARY_KEY, WandbSourceError, merge_records, records_from_wandb, summary_value

ROOT = Path(__file__).resolve().parents[2]


def _record(key: str, method: str = "finetune", score: float = 0.5, created: str = "2026-01-01T00:00:00+00:00",
            status: str = "complete", seed: int = 1) -> dict:
    from pl_petune.records import SCHEMA_VERSION

    return {"schema": SCHEMA_VERSION, "run_key": key, "status": status, "task": "cb", "benchmark": "superglue",
            "band": "low", "method": method, "name": None, "protocol": "train_split", "leaky": False,
            "init_seed": seed, "data_seed": seed, "seed_mode": "separate", "primary_metric": "f1_macro",
            "higher_is_better": True, "test_metrics": {"test/f1_macro": score}, "dev_metrics": {},
            "best_dev": score, "best_epoch": 0, "created_at": created, "trainable_params": 10, "total_params": 100,
            "trainable_percent": 10.0, "steps": 4, "epochs": 1, "train_size": 8, "hparams": {}, "extra": {}}


class _Run:
    def __init__(self, path, summary):
        self.path, self.summary = path, summary


class _Api:
    def __init__(self, runs):
        self._runs, self.asked = runs, []

    def runs(self, path):
        self.asked.append(("runs", path))
        return list(self._runs)

    def sweep(self, path):
        self.asked.append(("sweep", path))
        return SimpleNamespace(runs=list(self._runs))


def test_reads_complete_records_and_counts_the_rest():
    from pl_petune.records import validate

    done, running = _record("a"), _record("b", status="running")
    validate(done)  # the stand-in is a valid complete record
    api = _Api([_Run(["e", "p", "1"], {SUMMARY_KEY: summary_value(done)}),
                _Run(["e", "p", "2"], {SUMMARY_KEY: summary_value(running)}),
                _Run(["e", "p", "3"], {"dev/loss": 0.3})])  # not logged by petune fit
    records, skipped = records_from_wandb("e/p", api=api)
    assert [r["run_key"] for r in records] == ["a"] and skipped == 2
    assert records[0]["extra"]["wandb_run"] == "e/p/1"
    assert records[0]["test_metrics"] == done["test_metrics"]
    assert api.asked == [("runs", "e/p")]


@pytest.mark.parametrize("path, asked", [("e/p/abc", ("sweep", "e/p/abc")), ("e/p/sweeps/abc", ("sweep", "e/p/abc")),
                                         ("/e/p/", ("runs", "e/p"))])
def test_project_and_sweep_paths(path, asked):
    api = _Api([])
    assert records_from_wandb(path, api=api) == ([], 0)
    assert api.asked == [asked]


@pytest.mark.parametrize("path", ["e", "e/p/s/x/y", "e/p/runs/x"])
def test_bad_path_one_line(path):
    with pytest.raises(WandbSourceError, match="ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID"):
        records_from_wandb(path, api=_Api([]))


def test_corrupt_summary_names_the_run():
    api = _Api([_Run(["e", "p", "9"], {SUMMARY_KEY: "{not json"})])
    with pytest.raises(WandbSourceError, match=r"e', 'p', '9'.*not a valid record"):
        records_from_wandb("e/p", api=api)
    bad = _record("a")
    bad["schema"] = 999
    with pytest.raises(WandbSourceError, match="schema 999"):
        records_from_wandb("e/p", api=_Api([_Run(["e", "p", "9"], {SUMMARY_KEY: summary_value(bad)})]))


def test_api_failure_is_one_line():
    class Down:
        def runs(self, path):
            raise ConnectionError("no route to host")

    with pytest.raises(WandbSourceError, match=r"cannot list W&B runs of 'e/p' \(ConnectionError: no route"):
        records_from_wandb("e/p", api=Down())


def test_merge_keeps_one_record_per_key_the_latest():
    old = _record("k", score=0.1, created="2026-01-01T00:00:00+00:00")
    new = _record("k", score=0.9, created="2026-02-01T00:00:00+00:00")
    other = _record("j")
    merged = merge_records([old, other], [new])
    assert sorted(r["run_key"] for r in merged) == ["j", "k"]
    assert next(r for r in merged if r["run_key"] == "k")["test_metrics"]["test/f1_macro"] == 0.9
    merged = merge_records([new], [old])  # order of sources does not matter, time does
    assert merged[0]["test_metrics"]["test/f1_macro"] == 0.9


# ---- end to end: a real fit logs through WandbLogger (offline), the report reads it back ----------------------
def test_fit_logs_its_record_and_report_reads_it_back(tmp_path, tiny_bert, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from wandb.sdk.wandb_summary import Summary

    summaries: list[dict] = []  # what each real (offline) W&B run's summary received
    real_update = Summary.update

    def spy(self, d):
        summaries.append(dict(d))
        return real_update(self, d)

    monkeypatch.setattr(Summary, "update", spy)
    store = tmp_path / "store.sqlite"
    for method, lr in (("pl_petune.methods.FullFinetune", "1e-3"), ("pl_petune.methods.BitFit", "1e-2")):
        for seed in ("1", "2"):
            argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"),
                    "--model.class_path", method, "--model.init_args.backbone", tiny_bert,
                    "--model.init_args.lr", lr, "--run.seed", seed,
                    "--data.data_dir", data_dir, "--data.train_limit", "24", "--data.max_length", "32",
                    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                    "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
                    "--trainer.logger.save_dir", str(tmp_path), "--trainer.logger.offline", "true",
                    "--trainer.logger.project", "petune-test",
                    "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store)]
            assert main(argv) == 0
    stored = {r["run_key"]: r for r in Store(store).records()}
    summaries = [d for d in summaries if SUMMARY_KEY in d]
    assert len(stored) == 4 and len(summaries) == 4
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 4  # one W&B run per fit, though in one process
    logged = {json.loads(s[SUMMARY_KEY])["run_key"]: json.loads(s[SUMMARY_KEY]) for s in summaries}
    assert logged.keys() == stored.keys()
    for key, rec in stored.items():
        assert logged[key] == json.loads(json.dumps(rec, default=str))  # the very record the store holds
    flat = summaries[0]  # the flat scalars are there too, for W&B's own tables
    rec = json.loads(flat[SUMMARY_KEY])
    assert [v for k, v in flat.items() if k.endswith("test/f1_macro")] == [rec["test_metrics"]["test/f1_macro"]]

    # the report from W&B alone equals the report from the store
    runs = [_Run(["me", "petune-test", str(i)], s) for i, s in enumerate(summaries)]
    monkeypatch.setattr("wandb.Api", lambda: _Api(runs))
    capsys.readouterr()
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "from_store"), "--format", "csv"]) == 0
    assert main(["report", "--wandb", "me/petune-test", "--out", str(tmp_path / "from_wandb"), "--format", "csv"]) == 0
    assert "4 complete records from W&B me/petune-test" in capsys.readouterr().err
    a, b = (tmp_path / "from_store" / "table2.csv").read_text(), (tmp_path / "from_wandb" / "table2.csv").read_text()
    assert a == b and "finetune" in a and "bitfit" in a
    # both sources at once: still one record per run key
    assert main(["report", "--store", str(store), "--wandb", "me/petune-test",
                 "--out", str(tmp_path / "both"), "--format", "csv"]) == 0
    assert "from 4 runs" in capsys.readouterr().out


def test_report_needs_a_source_that_exists(tmp_path):
    from pl_petune.cli import UsageError
    from pl_petune.report import main as report_main

    with pytest.raises(UsageError, match="does not exist"):
        report_main(["--store", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path)])


def test_summary_value_round_trips():
    rec = _record("r")
    assert json.loads(summary_value(copy.deepcopy(rec))) == rec


@pytest.mark.parametrize("change,needle", [({"test_metrics": {"test/f1_macro": 70.0}}, "70 looks like a percent"),
                                           ({"protocol": "fair"}, "unknown protocol 'fair'"),
                                           ({"task": "cbx"}, "unknown task 'cbx'")])
def test_wandb_records_are_checked_like_store_records(change, needle):
    bad = {**_record("a"), **change}
    with pytest.raises(WandbSourceError, match=needle):
        records_from_wandb("e/p", api=_Api([_Run(["e", "p", "9"], {SUMMARY_KEY: summary_value(bad)})]))
