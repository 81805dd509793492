"""Every task in ../shared/data loads with the official row counts and label sets; bad files are refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pl_petune.data.sources import DataError, load_split
from pl_petune.tasks import TASKS, get_task, resource_band

# Row counts of the official releases (shared/data/README.md), and the label sets of the files.
EXPECTED = {
    "cb": (250, 56), "copa": (400, 100), "wsc": (554, 104), "rte": (2490, 277), "glue_rte": (2490, 277),
    "cola": (8551, 1043), "sst2": (67349, 872), "qnli": (None, 5463), "boolq": (None, 3270),
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_official_rows_and_labels(task, data_dir):
    spec = get_task(task)
    n_train, n_dev = EXPECTED[task]
    dev = load_split(spec, "dev", data_dir)
    assert len(dev) == n_dev
    n_classes = len(spec.labels)
    assert set(dev["label"]) == set(range(n_classes))
    assert set(spec.fields) <= set(dev.column_names)
    if n_train is None:
        with pytest.raises(DataError, match="file not found.*the folder has"):
            load_split(spec, "train", data_dir)
    else:
        train = load_split(spec, "train", data_dir)
        assert len(train) == n_train
        assert set(train["label"]) == set(range(n_classes))


def test_cb_label_names_map_to_registry_order(data_dir):
    spec = get_task("cb")
    counts = Counter(load_split(spec, "dev", data_dir)["label"])
    # CB dev: 23 entailment, 28 contradiction, 5 neutral (official val.jsonl)
    assert counts == {spec.labels.index("entailment"): 23, spec.labels.index("contradiction"): 28,
                      spec.labels.index("neutral"): 5}


def test_registry_covers_the_papers_tasks_with_bands():
    for name in ("cb", "copa", "wsc", "wic", "boolq", "rte", "glue_rte", "mrpc", "stsb", "cola", "sst2",
                 "qnli", "qqp", "mnli"):
        assert name in TASKS
    assert get_task("cb").band == "low" and get_task("rte").band == "medium" and get_task("sst2").band == "high"
    assert resource_band(999) == "low" and resource_band(1000) == "medium" and resource_band(10_000) == "high"
    assert get_task("stsb").kind == "regression" and get_task("copa").kind == "multiple_choice"
    assert get_task("cb").primary_metric.name == "f1_macro" and get_task("mrpc").primary_metric.name == "f1"
    assert get_task("cola").primary_metric.name == "mcc"


def test_unknown_task_lists_known():
    with pytest.raises(ValueError, match=r"unknown task 'cbb'; known: boolq, cb, cola"):
        get_task("cbb")


def _cb_dir(tmp_path: Path, train_lines: list[str]) -> Path:
    d = tmp_path / "super_glue" / "CB"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("\n".join(train_lines) + "\n")
    (d / "val.jsonl").write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0}) + "\n")
    return tmp_path


ROW = {"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}


@pytest.mark.parametrize("lines, match", [
    ([json.dumps(ROW), "{not json"], r"train.jsonl: row 2: not valid JSON"),
    ([json.dumps(ROW), json.dumps({**ROW, "label": "maybe"})],
     r"train.jsonl: row 2: label 'maybe' not in the task's set entailment, contradiction, neutral"),
    ([json.dumps({"premise": "p", "label": "entailment"})], r"train.jsonl: missing column\(s\) hypothesis"),
    ([json.dumps([1, 2])], r"row 1: expected a JSON object"),
])
def test_malformed_jsonl_is_one_line_error(tmp_path, lines, match):
    root = _cb_dir(tmp_path, lines)
    with pytest.raises(DataError, match=match) as info:
        load_split(get_task("cb"), "train", root)
    assert "\n" not in str(info.value)


def test_empty_file_and_missing_dir(tmp_path):
    root = _cb_dir(tmp_path, [])
    (root / "super_glue" / "CB" / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="train.jsonl: file is empty"):
        load_split(get_task("cb"), "train", root)
    with pytest.raises(DataError, match="data dir .*does not exist"):
        load_split(get_task("cb"), "train", tmp_path / "nope")


def test_wrong_layout_tsv_missing_columns(tmp_path):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("index\tpremise\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataError, match=r"train.tsv: missing column\(s\) sentence1, sentence2"):
        load_split(get_task("glue_rte"), "train", tmp_path)


def test_tsv_bad_label_names_row(tmp_path):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tyes\n")
    with pytest.raises(DataError, match=r"train.tsv: row 3: label 'yes' not in"):
        load_split(get_task("glue_rte"), "train", tmp_path)
