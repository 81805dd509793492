"""The bad-input table (docs/reliability.md): every row exits 2 with one line naming the bad value, no
traceback, and writes nothing."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from pl_petune.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")
CB_ROW = {"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}


def _cb_data(root: Path, train_lines: list[str]) -> str:
    d = root / "data" / "super_glue" / "CB"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(line + "\n" for line in train_lines))
    (d / "val.jsonl").write_text(json.dumps({**CB_ROW, "label": "neutral"}) + "\n")
    return str(root / "data")


def _store_newer(root: Path) -> str:
    path = root / "newer.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('store_schema', '7')")
    db.commit()
    db.close()
    return str(path)


def _store(root: Path) -> str:
    from pl_petune.store import Store

    return str(Store(root / "s.sqlite").path)


def _file(root: Path, name: str, text: str) -> str:
    (root / name).write_text(text)
    return str(root / name)


GOOD = [json.dumps({**CB_ROW, "label": lab, "idx": i}) for i, lab in
        enumerate(["entailment", "contradiction", "neutral"] * 10)]

# (id, argv builder(root, tiny, data) -> argv, regex the one line must match)
CASES = [
    ("unknown task", lambda r, t, d: ["fit", "--config", QUICK, "--data.task", "rtee"], r"unknown task 'rtee'; known: boolq, cb"),
    ("unknown method", lambda r, t, d: ["fit", "--config", QUICK, "--model.class_path", "pl_petune.methods.LoRa"],
     r"unknown method class 'pl_petune.methods.LoRa'; known: .*LoRA \(lora\)"),
    ("unknown protocol", lambda r, t, d: ["fit", "--config", QUICK, "--data.protocol", "fair"], r"unknown protocol 'fair'; known: train_split, petuning, dev_split, leaky"),
    ("wrong type in YAML", lambda r, t, d: ["fit", "--config", QUICK, "--config", _file(r, "t.yaml", "model:\n  init_args:\n    lr: fast\n")], r"lr.*Expected a <class 'float'>. Got value: fast"),
    ("unknown key in YAML", lambda r, t, d: ["fit", "--config", QUICK, "--config", _file(r, "k.yaml", "model:\n  init_args:\n    lrr: 0.1\n")], r"lrr.*not accepted"),
    ("YAML syntax error", lambda r, t, d: ["fit", "--config", _file(r, "s.yaml", "model: {lr: [1\n")], r"Problems parsing config"),
    ("missing recipe", lambda r, t, d: ["fit", "--config", str(r / "nope.yaml")], r"does not exist"),
    ("unknown trainer key", lambda r, t, d: ["fit", "--config", QUICK, "--trainer.max_epochz", "3"], r"unrecognized arguments: --trainer.max_epochz"),
    ("monitor never logged", lambda r, t, d: ["fit", "--config", QUICK, "--early_stopping.monitor", "dev/f1"], r"'dev/f1' is never logged for task cb; logged: dev/loss, dev/f1_macro, dev/accuracy"),
    ("monitor on held-out split", lambda r, t, d: ["fit", "--config", QUICK, "--early_stopping.monitor", "test/accuracy"], r"not a development-split metric; allowed: dev/loss"),
    ("negative learning rate", lambda r, t, d: ["fit", "--config", QUICK, "--model.init_args.lr", "-1"], r"lr must be positive, got -1.0"),
    ("warmup ratio out of range", lambda r, t, d: ["fit", "--config", QUICK, "--model.init_args.warmup_ratio", "1.5"], r"warmup_ratio must be in \[0, 1\), got 1.5"),
    ("unknown head", lambda r, t, d: ["fit", "--config", QUICK, "--model.init_args.head", "big"], r"unknown head 'big'; known: mlp, linear, ehft"),
    ("zero batch size", lambda r, t, d: ["fit", "--config", QUICK, "--data.batch_size", "0"], r"batch sizes must be >= 1"),
    ("dev fraction out of range", lambda r, t, d: ["fit", "--config", QUICK, "--data.dev_fraction", "1.0"], r"data.dev_fraction 1.0 must be in \(0, 1\)"),
    ("missing data dir", lambda r, t, d: ["fit", "--config", QUICK, "--data.data_dir", str(r / "nodata")], r"data dir '.*nodata' does not exist"),
    ("malformed JSONL row", lambda r, t, d: ["fit", "--config", QUICK, "--data.data_dir", _cb_data(r, GOOD + ["{oops"])], r"train.jsonl: row 31: not valid JSON"),
    ("label outside the task's set", lambda r, t, d: ["fit", "--config", QUICK, "--data.data_dir", _cb_data(r, GOOD + [json.dumps({**CB_ROW, "label": "maybe"})])], r"row 31: label 'maybe' not in the task's set entailment, contradiction, neutral"),
    ("missing column", lambda r, t, d: ["fit", "--config", QUICK, "--data.data_dir", _cb_data(r, [json.dumps({"premise": "p", "label": "neutral"})])], r"missing column\(s\) hypothesis"),
    ("empty data file", lambda r, t, d: ["fit", "--config", QUICK, "--data.data_dir", _cb_data(r, [])], r"train.jsonl: file is empty"),
    ("split too small to stratify", lambda r, t, d: ["fit", "--config", QUICK, "--data.data_dir", _cb_data(r, GOOD[:4])], r"cannot stratify 4 train examples"),
    ("train_limit below class count", lambda r, t, d: ["fit", "--config", QUICK, "--data.train_limit", "2"], r"train_limit 2 is smaller than the number of classes \(3\)"),
    ("sweep file missing", lambda r, t, d: ["sweep", str(r / "nope.yaml"), "--check"], r"sweep file '.*nope.yaml' not found"),
    ("sweep with zero seeds", lambda r, t, d: ["sweep", _file(r, "z.yaml", "method: grid\ncommand: [x]\nparameters: {run.seed: {values: []}}\n"), "--check"], r"'run.seed': 'values' must be a non-empty list, got \[\]"),
    ("sweep YAML syntax error", lambda r, t, d: ["sweep", _file(r, "y.yaml", "method: grid\nparameters: {a: [1\n"), "--check"], r"not valid YAML"),
    ("store from a newer schema", lambda r, t, d: ["runs", "--store", _store_newer(r)], r"schema 7, newer than this pl_petune's 1"),
    ("store that is not a store", lambda r, t, d: ["runs", "--store", _file(r, "x.sqlite", "not a database " * 200)], r"not a pl_petune results store"),
    ("report on a missing store", lambda r, t, d: ["report", "--store", str(r / "none.sqlite"), "--out", str(r / "rep")], r"store '.*none.sqlite' does not exist"),
    ("params: unknown method", lambda r, t, d: ["params", "--method", "loraa"], r"unknown method 'loraa'; known: .*adapter, .*bitfit"),
    ("unknown command", lambda r, t, d: ["fitt"], r"unknown command 'fitt'; known: fit, validate, test"),
    ("one-logit head on a three-class task", lambda r, t, d: ["fit", "--config", QUICK, "--model.init_args.binary_head", "one_logit"], r"binary_head one_logit needs a two-class task; cb is classification with 3 labels"),
    ("report from a malformed W&B path", lambda r, t, d: ["report", "--wandb", "my-team", "--out", str(r / "rep")], r"W&B path 'my-team' is not ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID"),
    ("forget a run the store does not have", lambda r, t, d: ["runs", "--store", _store(r), "--forget", "abc123"], r"run 'abc123' is not in .*s.sqlite; `petune runs` lists its run keys"),
]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name, build, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, capsys, tiny_bert, data_dir, monkeypatch, name, build, pattern):
    monkeypatch.setenv("PETUNE_DATA_DIR", data_dir)
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path, tiny_bert, data_dir)
    if argv[0] == "fit":
        argv += ["--model.init_args.backbone", tiny_bert, "--run.store", str(tmp_path / "out" / "s.sqlite"),
                 "--run.out_dir", str(tmp_path / "out" / "runs"), "--trainer.enable_progress_bar", "false"]
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in err if line.startswith("petune")]  # library warnings are not ours
    assert len(err) == 1, err
    assert re.search(pattern, err[0]), err[0]
    assert "Traceback" not in err[0]
    assert _snapshot(tmp_path) == before, f"{name}: files were written"


def test_the_table_has_at_least_25_rows():
    assert len(CASES) >= 25
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for name, _, _ in CASES:
        assert name in doc, f"docs/reliability.md does not list {name!r}"
