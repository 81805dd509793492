"""``--run.save_predictions true``: the held-out pass's per-example predictions beside record.json, named in the
record with their SHA-256, from which the recorded held-out metrics are recomputed with scikit-learn and scipy
(multi-class CB, multiple-choice COPA, regression STS-B, an OOD set; the CLI and a plain Lightning Trainer)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import accuracy_score, f1_score

from pl_petune.cli import main
from pl_petune.predictions import read
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]
# float32 metrics (torchmetrics) against float64 recomputation
TOL = 1e-6


def _fit(tmp_path, tiny_bert, data_dir, *extra, limit=("--data.train_limit", "32")):
    store = tmp_path / "s.sqlite"
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, *limit, "--data.max_length", "32", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--run.out_dir", str(tmp_path / "runs"),
            "--run.store", str(store), "--run.save_predictions", "true", *extra]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    return rec


def _file(rec, key="test"):
    entry = rec["predictions"][key]
    path = Path(rec["run_dir"]) / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    rows = read(path)
    assert len(rows) == entry["rows"]
    return rows


def test_cb_predictions_recompute_the_recorded_metrics(tmp_path, tiny_bert, data_dir):
    rec = _fit(tmp_path, tiny_bert, data_dir)
    rows = _file(rec)
    official = [json.loads(line) for line in open(Path(data_dir) / "super_glue" / "CB" / "val.jsonl")]
    assert len(rows) == rec["test_size"] == len(official)
    assert [r["idx"] for r in rows] == [o["idx"] for o in official] and [r["row"] for r in rows] == list(range(56))
    assert [r["label"] for r in rows] == [o["label"] for o in official]  # gold as the official file spells it
    gold, pred = [r["label"] for r in rows], [r["pred"] for r in rows]
    test = rec["test_metrics"]
    assert f1_score(gold, pred, average="macro", labels=["entailment", "contradiction", "neutral"]) == \
        pytest.approx(test["test/f1_macro"], abs=TOL)
    assert accuracy_score(gold, pred) == pytest.approx(test["test/accuracy"], abs=TOL)
    for r in rows:  # three logits and their softmax; the prediction is their argmax
        assert len(r["scores"]) == 3 and sum(r["probs"]) == pytest.approx(1.0, abs=1e-6)
        assert ["entailment", "contradiction", "neutral"][int(np.argmax(r["scores"]))] == r["pred"]
    logits = np.array([r["scores"] for r in rows], dtype=np.float64)
    ids = np.array([["entailment", "contradiction", "neutral"].index(g) for g in gold])
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    assert float(-logp[np.arange(len(ids)), ids].mean()) == pytest.approx(test["test/loss"], abs=1e-5)


def test_predictions_are_off_by_default_and_not_part_of_the_run_key(tmp_path, tiny_bert, data_dir):
    on = _fit(tmp_path / "on", tiny_bert, data_dir)
    store = tmp_path / "off" / "s.sqlite"
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "32",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "off" / "runs"), "--run.store", str(store)]
    assert main(argv) == 0
    (off,) = Store(store).records()
    assert off["run_key"] == on["run_key"] and off["test_metrics"] == on["test_metrics"]
    assert "predictions" not in off and not list(Path(off["run_dir"]).glob("predictions*"))


def test_copa_multiple_choice_predictions_score_per_choice(tmp_path, tiny_bert, data_dir):
    rec = _fit(tmp_path, tiny_bert, data_dir, "--data.task", "copa", "--early_stopping.monitor", "dev/loss")
    rows = _file(rec)
    official = [json.loads(line) for line in open(Path(data_dir) / "super_glue" / "COPA" / "val.jsonl")]
    assert [r["idx"] for r in rows] == [o["idx"] for o in official]
    assert [r["label"] for r in rows] == [o["label"] for o in official]
    assert all(len(r["scores"]) == 2 and r["pred"] == int(np.argmax(r["scores"])) for r in rows)
    acc = accuracy_score([r["label"] for r in rows], [r["pred"] for r in rows])
    assert acc == pytest.approx(rec["test_metrics"]["test/accuracy"], abs=TOL)


def _stsb(root: Path, n_train: int = 60, n_dev: int = 20) -> str:
    d = root / "glue" / "STS-B"
    d.mkdir(parents=True)
    rng = random.Random(0)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [f"{i}\tmain\tf\t2012\t{i}\ts\ts\ta man plays {i}\ta man sings {i % 7}\t{rng.uniform(0, 5):.3f}"
                for i in range(n)]
        (d / name).write_text(head + "\n".join(rows) + "\n")
    return str(root)


def test_regression_predictions_recompute_pearson_spearman_and_mse(tmp_path, tiny_bert):
    data = _stsb(tmp_path / "data")
    rec = _fit(tmp_path, tiny_bert, data, "--data.task", "stsb", "--early_stopping.monitor", "dev/loss", limit=())
    rows = _file(rec)
    assert [r["row"] for r in rows] == [r["idx"] for r in rows] == list(range(20))  # a TSV: its row positions
    gold = np.array([r["label"] for r in rows])
    pred = np.array([r["pred"] for r in rows])
    assert "probs" not in rows[0] and gold == pytest.approx([float(x.split("\t")[-1]) for x in
                                                              open(Path(data) / "glue" / "STS-B" / "dev.tsv")
                                                              .read().splitlines()[1:]], abs=1e-6)
    test = rec["test_metrics"]
    assert sps.pearsonr(pred, gold)[0] == pytest.approx(test["test/pearson"], abs=1e-5)
    assert sps.spearmanr(pred, gold)[0] == pytest.approx(test["test/spearman"], abs=1e-5)
    assert float(np.mean((pred - gold) ** 2)) == pytest.approx(test["test/loss"], rel=1e-5)


def test_ood_sets_get_their_own_predictions_file(tmp_path, tiny_bert, data_dir):
    ood = '{"cb": {"task": "cb", "label_map": {"entailment": "entailment", "contradiction": "not_entailment", ' \
          '"neutral": "not_entailment"}}}'
    rec = _fit(tmp_path, tiny_bert, data_dir, "--data.task", "rte", "--data.ood", ood)
    assert set(rec["predictions"]) == {"test", "ood/cb"} and rec["predictions"]["ood/cb"]["split"] == "cb dev"
    rows = _file(rec, "ood/cb")
    official = [json.loads(line) for line in open(Path(data_dir) / "super_glue" / "CB" / "val.jsonl")]
    mapped = {"entailment": "entailment", "contradiction": "not_entailment", "neutral": "not_entailment"}
    assert [r["label"] for r in rows] == [mapped[o["label"]] for o in official]
    acc = accuracy_score([r["label"] for r in rows], [r["pred"] for r in rows])
    assert acc == pytest.approx(rec["ood_metrics"]["ood/cb/accuracy"], abs=TOL)
    test_rows = _file(rec)
    acc = accuracy_score([r["label"] for r in test_rows], [r["pred"] for r in test_rows])
    assert acc == pytest.approx(rec["test_metrics"]["test/accuracy"], abs=TOL)


def test_a_plain_lightning_recorder_writes_predictions_too(tmp_path, tiny_bert, data_dir):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pl_petune.data import TaskDataModule
    from pl_petune.methods import FullFinetune
    from pl_petune.recorder import RunRecorder

    dm = TaskDataModule(task="cb", data_dir=data_dir, tokenizer=tiny_bert, max_length=32, train_limit=32, data_seed=3)
    model = FullFinetune(task="cb", backbone=tiny_bert, lr=1e-3, init_seed=3, binary_head="two_logits")
    recorder = RunRecorder(out_dir=str(tmp_path / "runs"), store=str(tmp_path / "s.sqlite"), save_predictions=True)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path),
                        callbacks=[ModelCheckpoint(monitor="dev/loss", dirpath=str(tmp_path / "ckpt")), recorder])
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    (rec,) = Store(tmp_path / "s.sqlite").records()
    rows = _file(rec)
    assert f1_score([r["label"] for r in rows], [r["pred"] for r in rows], average="macro") == \
        pytest.approx(rec["test_metrics"]["test/f1_macro"], abs=TOL)


def test_a_split_of_the_official_dev_file_and_a_one_logit_head(tmp_path, tiny_bert, data_dir):
    """The pilot protocol (dev_split) tests on half of the official validation file: each row names its place there."""
    rec = _fit(tmp_path, tiny_bert, data_dir, "--data.task", "rte", "--data.protocol", "dev_split",
               "--model.init_args.binary_head", "one_logit")
    rows = _file(rec)
    official = [json.loads(line) for line in open(Path(data_dir) / "super_glue" / "RTE" / "val.jsonl")]
    assert 0 < len(rows) == rec["test_size"] < len(official)
    assert all(r["idx"] == official[r["row"]]["idx"] and r["label"] == official[r["row"]]["label"] for r in rows)
    assert len({r["row"] for r in rows}) == len(rows)
    for r in rows:  # one logit, positive above 0; probs [p(0), p(1)]
        assert len(r["scores"]) == 1 and (r["pred"] == "not_entailment") == (r["scores"][0] > 0)
        assert r["probs"][1] == pytest.approx(1 / (1 + np.exp(-r["scores"][0])), abs=1e-6)
    acc = accuracy_score([r["label"] for r in rows], [r["pred"] for r in rows])
    assert acc == pytest.approx(rec["test_metrics"]["test/accuracy"], abs=TOL)


def test_predictions_refuse_a_multi_process_trainer():
    from types import SimpleNamespace

    from pl_petune.errors import ConfigError
    from pl_petune.recorder import RunRecorder

    with pytest.raises(ConfigError, match="writes one file from one process; this trainer has 2"):
        RunRecorder(save_predictions=True).on_fit_start(SimpleNamespace(world_size=2), None)  # type: ignore[arg-type]
