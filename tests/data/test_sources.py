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


# ---- every row's input fields are checked like its label (issue 15 item 6) ----------------------------------
@pytest.mark.parametrize("row, match", [
    ({**ROW, "premise": None}, r"row 2: field 'premise' is null \(expected text\) \(task cb\)"),
    ({**ROW, "hypothesis": 7}, r"row 2: field 'hypothesis' is int 7 \(expected text\)"),
    ({**ROW, "premise": ["a", "b"]}, r"row 2: field 'premise' is list \['a', 'b'\] \(expected text\)"),
    ({"premise": "p", "label": "entailment", "idx": 1}, r"row 2: field 'hypothesis' is missing"),
    ({**ROW, "hypothesis": {"t": "x"}}, r"row 2: field 'hypothesis' is dict"),
    ({**ROW, "premise": True}, r"row 2: field 'premise' is bool True"),
])
def test_jsonl_row_with_a_bad_input_field_is_refused_with_its_row(tmp_path, row, match):
    root = _cb_dir(tmp_path, [json.dumps(ROW), json.dumps(row), json.dumps(ROW)])
    with pytest.raises(DataError, match=match) as info:
        load_split(get_task("cb"), "train", root)
    assert "\n" not in str(info.value) and "train.jsonl" in str(info.value)


def _superglue(tmp_path: Path, folder: str, rows: list[dict]) -> Path:
    d = tmp_path / "super_glue" / folder
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


COPA_ROW = {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.", "question": "cause",
            "label": 0, "idx": 0}
WSC_ROW = {"text": "Mark told Pete he was late.", "target": {"span1_text": "Pete", "span2_text": "he"},
           "label": True, "idx": 0}


@pytest.mark.parametrize("folder, task, bad, match", [
    ("COPA", "copa", {**COPA_ROW, "choice2": None}, r"row 2: field 'choice2' is null"),
    ("COPA", "copa", {**COPA_ROW, "question": "why"}, r"row 2: question 'why' not in the task's set cause, effect"),
    ("WSC", "wsc", {**WSC_ROW, "target": {"span1_text": "Pete"}}, r"row 2: field 'span2_text' is missing"),
    ("WSC", "wsc", {**WSC_ROW, "target": {"span1_text": 3, "span2_text": "he"}}, r"row 2: field 'span1_text' is int"),
])
def test_fields_inside_the_formatter_are_checked_too(tmp_path, folder, task, bad, match):
    good = COPA_ROW if task == "copa" else WSC_ROW
    root = _superglue(tmp_path, folder, [good, bad])
    with pytest.raises(DataError, match=match):
        load_split(get_task(task), "train", root)


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize("body, match", [
    ("0\ta\tb\tentailment\n1\tc\n", r"train.tsv: row 3: 2 field\(s\) where the header has 4: field 'sentence2' "
                                    r"is missing \(task glue_rte\)"),
    ("0\ta\tb\tentailment\n1\tc\td\n", r"row 3: 3 field\(s\) where the header has 4: field 'label' is missing"),
    ("0\ta\tb\tentailment\textra\n", r"row 2: 5 fields where the header has 4"),
])
def test_tsv_row_with_missing_or_extra_fields_is_refused_with_its_row(tmp_path, body, match):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(RTE_HEADER + body)
    with pytest.raises(DataError, match=match) as info:
        load_split(get_task("glue_rte"), "train", tmp_path)
    assert "\n" not in str(info.value)


def test_tsv_cells_stay_text_even_when_they_look_like_numbers(tmp_path):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(RTE_HEADER + "0\t1984\t007\tentailment\n1\t3.50\tNaN\tnot_entailment\n")
    ds = load_split(get_task("glue_rte"), "train", tmp_path)
    assert ds["sentence1"] == ["1984", "3.50"] and ds["sentence2"] == ["007", "NaN"]
    assert ds["label"] == [0, 1]


def test_headerless_tsv_short_row_names_the_layout(tmp_path):
    d = tmp_path / "glue" / "CoLA"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("src\t1\t\tGood.\nsrc\t0\n")
    with pytest.raises(DataError, match=r"row 2: 2 field\(s\) where task cola's layout has 4: field 'sentence'"):
        load_split(get_task("cola"), "train", tmp_path)


def test_bad_row_through_the_cli_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_bert, monkeypatch, capsys):
    from pl_petune.cli import main

    rows = [json.dumps({**ROW, "label": lab, "idx": i}) for i, lab in
            enumerate(["entailment", "contradiction", "neutral"] * 10)]
    rows[7] = json.dumps({**ROW, "hypothesis": None, "idx": 7})
    root = _cb_dir(tmp_path, rows)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    rc = main(["fit", "--config", str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"),
               "--model.init_args.backbone", tiny_bert, "--data.data_dir", str(root), "--run.out_dir", str(out),
               "--run.store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "train.jsonl: row 8: field 'hypothesis' is null" in err[0]
    assert not (tmp_path / "s.sqlite").exists()
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True


# ---- blank text: a wrong column or a broken export trains on nothing, silently -----------------------------
def test_a_field_blank_in_every_row_is_refused_with_its_count(tmp_path):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(RTE_HEADER + "0\ta\t\tentailment\n1\tc\t  \tnot_entailment\n2\te\t\tentailment\n")
    with pytest.raises(DataError, match=r"train.tsv: field 'sentence2' is empty in 3 of 3 rows \(first: row 2\) "
                                        r"\(task glue_rte\); fill the text") as info:
        load_split(get_task("glue_rte"), "train", tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("rows, blank, refused", [(200, 1, False), (200, 2, False), (200, 3, True), (50, 1, True)])
def test_a_few_blank_rows_are_warned_of_more_are_refused(tmp_path, rows, blank, refused):
    lines = [json.dumps({**ROW, "idx": i, "hypothesis": "" if i % 7 == 3 and i < 7 * blank else "h"})
             for i in range(rows)]
    root = _cb_dir(tmp_path, lines)
    what = rf"field 'hypothesis' is empty in {blank} of {rows} rows \(first: row 4\)"
    if refused:
        with pytest.raises(DataError, match=what):
            load_split(get_task("cb"), "train", root)
    else:
        with pytest.warns(UserWarning, match=what):
            ds = load_split(get_task("cb"), "train", root)
        assert len(ds) == rows and ds["hypothesis"].count("") == blank


def test_a_blank_column_through_the_cli_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_bert, monkeypatch,
                                                                              capsys):
    from pl_petune.cli import main

    rows = [json.dumps({**ROW, "hypothesis": "", "label": lab, "idx": i}) for i, lab in
            enumerate(["entailment", "contradiction", "neutral"] * 10)]
    root = _cb_dir(tmp_path, rows)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    rc = main(["fit", "--config", str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"),
               "--model.init_args.backbone", tiny_bert, "--data.data_dir", str(root), "--run.out_dir", str(out),
               "--run.store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "train.jsonl: field 'hypothesis' is empty in 30 of 30 rows (first: row 1)" in err[0]
    assert not (tmp_path / "s.sqlite").exists()
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True
