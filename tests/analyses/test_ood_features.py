"""Issue 10 on a tiny BERT and real RTE/CB: the OOD pass scores the best weights on the declared label
mapping, and SaveHeadFeatures stores exactly the tensors the head read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pl_petune.packaged import config_args
import pytest
import torch

from pl_petune.cli import main
from pl_petune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CB_MAP = {"entailment": "entailment", "contradiction": "not_entailment", "neutral": "not_entailment"}
OOD = json.dumps({"cb": {"task": "cb", "label_map": CB_MAP}})


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("ood")
    argv = ["fit", *config_args(str(ROOT / "recipes" / "analyses" / "rte_ood_ft.yaml")),
            "--model.init_args.backbone", tiny_bert, "--model.init_args.lr", "1e-3",
            "--data.data_dir", data_dir, "--data.train_limit", "48", "--data.max_length", "48",
            "--data.ood", OOD, "--trainer.max_epochs", "2",  # the recipe attaches SaveHeadFeatures
            "--run.out_dir", str(tmp / "runs"), "--run.store", str(tmp / "s.sqlite"),
            "--run.keep_checkpoints", "true"]
    assert main(argv) == 0
    (path,) = (tmp / "runs").glob("rte/finetune/*/record.json")
    return json.loads(path.read_text())


def _best(record):
    from pl_petune.methods import FullFinetune

    ckpt = Path(record["run_dir"]) / "checkpoints" / "best.ckpt"
    return FullFinetune.load_from_checkpoint(ckpt, map_location="cpu").eval()


def _dm(record, data_dir, **kw):
    from pl_petune.data import TaskDataModule

    h = record["hparams"]
    return TaskDataModule(task="rte", data_dir=data_dir, tokenizer=h["model.init_args.backbone"], data_seed=1,
                          train_limit=48, max_length=48, ood={"cb": {"task": "cb", "label_map": CB_MAP}}, **kw)


def test_ood_labels_follow_the_declared_mapping(data_dir, tiny_bert):
    from pl_petune.data import TaskDataModule
    from pl_petune.data.module import OODSet

    dm = TaskDataModule(task="rte", data_dir=data_dir, tokenizer=tiny_bert,
                        ood={"cb": OODSet(task="cb", label_map=CB_MAP)})
    mapped = torch.cat([b["labels"] for b in dm.ood_dataloader("cb")]).numpy()
    raw = [json.loads(line)["label"] for line in (Path(data_dir) / "super_glue/CB/val.jsonl").open()]
    assert len(mapped) == len(raw) == 56 and {"neutral", "contradiction"} <= set(raw)
    assert mapped.tolist() == [0 if r == "entailment" else 1 for r in raw]  # rte: entailment 0, not_entailment 1
    flipped = TaskDataModule(task="rte", data_dir=data_dir, tokenizer=tiny_bert,
                             ood={"cb": OODSet(task="cb", label_map={**CB_MAP, "neutral": "entailment"})})
    other = torch.cat([b["labels"] for b in flipped.ood_dataloader("cb")]).numpy()
    assert other.tolist() == [0 if r in ("entailment", "neutral") else 1 for r in raw] != mapped.tolist()


@pytest.mark.parametrize("ood,needle", [
    ({"task": "cb", "label_map": {**CB_MAP, "maybe": "entailment"}}, "'maybe' is not a label of cb; allowed: entailment, contradiction, neutral"),
    ({"task": "cb", "label_map": {"entailment": "entailment", "contradiction": "not_entailment"}}, "'neutral' of cb is not mapped"),
    ({"task": "cb", "label_map": {**CB_MAP, "neutral": "unknown"}}, "'unknown' is not a label of rte; allowed: entailment, not_entailment"),
    ({"task": "cb", "label_map": CB_MAP, "split": "test"}, "split 'test' is unknown; allowed: train, dev"),
    ({"task": "stsb", "label_map": {}}, "needs classification tasks"),
    ({"task": "cb"}, "label 'entailment' of cb is not mapped"),  # no identity default: the label sets differ
])
def test_bad_ood_declarations_are_refused_in_one_line(ood, needle, tiny_bert):
    from pl_petune.data import TaskDataModule
    from pl_petune.data.module import OODSet

    with pytest.raises(ConfigError, match="data.ood.x") as err:
        TaskDataModule(task="rte", tokenizer=tiny_bert, ood={"x": OODSet(**ood)})
    assert needle in str(err.value) and "\n" not in str(err.value)


def _mnli_files(root: Path) -> list[str]:
    d = root / "glue" / "MNLI"
    d.mkdir(parents=True)
    labels = ["entailment", "neutral", "contradiction"]
    mismatched = []
    for name, n, shift in (("train.tsv", 12, 0), ("dev_matched.tsv", 6, 1), ("dev_mismatched.tsv", 9, 2)):
        rows = [f"{i}\tpremise {name} {i}\thypothesis {i}\t{labels[(i * 7 + shift) % 3]}" for i in range(n)]
        (d / name).write_text("index\tsentence1\tsentence2\tgold_label\n" + "\n".join(rows) + "\n")
        if name == "dev_mismatched.tsv":
            mismatched = [labels[(i * 7 + shift) % 3] for i in range(n)]
    return mismatched


def test_mnli_mismatched_is_an_ood_set_of_mnli_with_the_identity_map(tmp_path, tiny_bert):
    from pl_petune.data import TaskDataModule
    from pl_petune.data.module import OODSet

    raw = _mnli_files(tmp_path)
    dm = TaskDataModule(task="mnli", data_dir=str(tmp_path), tokenizer=tiny_bert,
                        ood={"mnli_mm": OODSet(task="mnli_mm")})
    assert dm.ood["mnli_mm"].label_map == {"entailment": "entailment", "neutral": "neutral",
                                           "contradiction": "contradiction"}
    got = torch.cat([b["labels"] for b in dm.ood_dataloader("mnli_mm")]).tolist()
    assert got == [["entailment", "neutral", "contradiction"].index(r) for r in raw] and len(got) == 9


def test_ood_set_is_refused_before_fit_ends(data_dir, tiny_bert):
    from pl_petune.data import TaskDataModule
    from pl_petune.data.module import HeldOutAccessError, OODSet

    dm = TaskDataModule(task="rte", data_dir=data_dir, tokenizer=tiny_bert, ood={"cb": OODSet("cb", CB_MAP)})
    dm.setup("fit")  # as the trainer does at the start of fit
    with pytest.raises(HeldOutAccessError):
        dm.ood_dataloader("cb")
    with pytest.raises(ConfigError, match="unknown OOD set 'mnli'; declared: cb"):
        dm.teardown("fit")
        dm.ood_dataloader("mnli")


def test_record_holds_ood_metrics_of_the_best_weights(run, data_dir):
    assert set(run["ood_metrics"]) == {"ood/cb/accuracy"} and run["ood_sizes"] == {"cb": 56}
    assert run["ood_sets"]["cb"] == {"task": "cb", "split": "dev", "label_map": CB_MAP}
    model, dm = _best(run), _dm(run, data_dir)
    preds, labels = [], []
    with torch.no_grad():
        for b in dm.ood_dataloader("cb"):
            preds.append(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).argmax(-1))
            labels.append(b["labels"])
    acc = (torch.cat(preds) == torch.cat(labels)).float().mean().item()
    assert run["ood_metrics"]["ood/cb/accuracy"] == pytest.approx(acc, abs=1e-6)


def test_saved_features_are_what_the_head_reads(run, data_dir):
    saved = np.load(Path(run["run_dir"]) / "features.npz")
    assert run["extra"]["head_features"].endswith("features.npz")
    n_train, n_dev = run["train_size"], run["dev_size"]
    assert saved["train_features"].shape == (n_train, 32) and saved["train_labels"].shape == (n_train,)
    model, dm = _best(run), _dm(run, data_dir)
    dm.setup("validate")
    feats, logits, labels = [], [], []
    with torch.no_grad():
        for b in dm.val_dataloader():
            f = model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            feats.append(f)
            logits.append(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]))
            labels.append(b["labels"])
    feats = torch.cat(feats)
    dev = torch.from_numpy(saved["dev_features"])
    assert dev.shape == feats.shape == (n_dev, 32)
    assert torch.allclose(dev, feats, atol=1e-6)
    assert torch.allclose(model.head(dev), torch.cat(logits), atol=1e-5)  # the head maps them to the logits
    assert saved["dev_labels"].tolist() == torch.cat(labels).tolist()


def test_features_plot_writes_png_and_silhouettes_of_the_saved_inputs(run, tmp_path, capsys):
    from sklearn.metrics import silhouette_score

    out = tmp_path / "fig.png"
    assert main(["features", "plot", "--runs", run["run_dir"], run["run_dir"], "--labels", "A", "B",
                 "--out", str(out), "--reduce", "pca"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = json.loads(out.with_suffix(".json").read_text())
    saved = np.load(Path(run["run_dir"]) / "features.npz")
    assert [s["panel"] for s in scores] == ["A", "B"]
    assert scores[0]["silhouette_dev"] == pytest.approx(silhouette_score(saved["dev_features"], saved["dev_labels"]))
    assert "| A |" in capsys.readouterr().out


def test_silhouette_ranks_separated_classes_above_mixed_ones():
    from pl_petune.features import silhouette

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    mixed = rng.normal(size=(100, 8))
    separated = mixed + labels[:, None] * 6.0
    assert silhouette(separated, labels) > 0.5 > silhouette(mixed, labels)
    assert np.isnan(silhouette(mixed, np.zeros(100)))


@pytest.mark.parametrize("argv,needle", [
    (["plot", "--runs", "/nonexistent"], "no features.npz in '/nonexistent'"),
    (["plot", "--runs", "a", "b", "--labels", "x"], "--labels gives 1 titles for 2 runs"),
    (["plot", "--runs", "a", "--reduce", "umap"], "unknown --reduce 'umap'; choose from: tsne, pca"),
])
def test_features_command_refuses_in_one_line(argv, needle, capsys):
    assert main(["features", *argv]) == 2
    assert needle in capsys.readouterr().err
