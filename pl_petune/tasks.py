"""The task registry: the only place a task is described.

Each :class:`TaskSpec` says where the task's data lives (local file layout and hub id), which fields make
the model input, the label set, the metrics (with their direction) and the resource band of the train
size (low < 1k, medium < 10k, high >= 10k; the Revisiting paper's bands).

Input formats, exactly those of the PETuning code (``tasks/{glue,superglue}/dataset.py``, REFERENCE §1.2,
§10), which every Revisiting recipe reproduces:

- pair tasks give ``(text_a, text_b)``; single-sentence tasks give ``text_a`` only;
- COPA is a 2-way multiple choice: each choice is the pair ``("<premise> because", "<choice>")`` when the
  question is ``cause`` and ``("<premise> so", "<choice>")`` when it is ``effect`` (the connective ends the
  first segment, ``dataset.py:149-152``);
- WSC is the pair ``("<span2>: <text>", "<span1>")``, a binary classification as in PETuning;
- WiC is the single string of PETuning's template 0 (``template_id`` defaults to 0 and no released script
  changes it, ``dataset.py:133-137``):
  ``"<sentence1> <sentence2> Does <word> have the same meaning in both sentences?"``.

Every row's input fields are checked when the data is read (:meth:`TaskSpec.row_problem`): a field that is
missing, null or not a string is refused with the row's number, as a bad label is.

Metrics (torchmetrics; names are what the modules log after ``dev/`` or ``test/``):
``accuracy``; ``f1_macro`` (CB: macro F1 over the 3 classes, as the SuperGLUE scorer); ``f1`` (MRPC,
QQP: binary F1 of the positive class, as the GLUE scorer); ``mcc`` (CoLA: Matthews correlation);
``pearson`` and ``spearman`` (STS-B, regression).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from pl_petune.errors import ConfigError

BANDS = ("low", "medium", "high")


def resource_band(n_train: int) -> str:
    """Band of a task by its official train size (Revisiting PETuning: low < 1k, medium < 10k, high)."""
    if n_train < 1_000:
        return "low"
    if n_train < 10_000:
        return "medium"
    return "high"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """Everything pl_petune knows about one task.

    Attributes:
        name: registry name (lower case), e.g. ``"cb"``.
        benchmark: ``"glue"`` or ``"super_glue"``.
        kind: ``"classification"``, ``"regression"`` or ``"multiple_choice"``.
        fields: raw columns the formatter reads (checked when loading).
        labels: label names in index order (empty for regression; choice count for multiple choice).
        label_column: raw column holding the label.
        metrics: metrics computed on dev and test; the first is the headline (``primary``).
        n_train: official train size (decides the band).
        local: layout on disk relative to the data dir: ``{"train": ..., "dev": ...}`` and file options.
        hub: ``(path, config, {"train": split, "dev": split})`` for ``datasets.load_dataset``.
        primary: the headline metric name (Revisiting Table 2's metric).
    """

    name: str
    benchmark: str
    kind: str
    fields: tuple[str, ...]
    labels: tuple[str, ...]
    label_column: str
    metrics: tuple[MetricSpec, ...]
    n_train: int
    local: Mapping[str, Any]
    hub: tuple[str, str, Mapping[str, str]]
    format: Callable[[Mapping[str, Any]], Any] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    primary: str = ""
    num_choices: int = 0
    check: Callable[[Mapping[str, Any]], str | None] | None = field(repr=False, compare=False, default=None)
    # Bumped when ``format`` changes the text a model reads, so a run key never names two different inputs
    # (a complete run of the old text is not taken for one of the new). Version 1 is left out of run keys.
    input_version: int = 1

    @property
    def band(self) -> str:
        return resource_band(self.n_train)

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: classes, 1 for regression, 1 score per choice."""
        if self.kind == "classification":
            return len(self.labels)
        return 1

    @property
    def primary_metric(self) -> MetricSpec:
        for m in self.metrics:
            if m.name == (self.primary or self.metrics[0].name):
                return m
        raise KeyError(self.primary)

    def row_problem(self, row: Mapping[str, Any]) -> str | None:
        """Why ``row`` cannot be formatted as this task's input (None when it can): every field in ``fields``
        must be present and a string, plus the task's own check (WSC's spans, COPA's question)."""
        for name in self.fields:
            problem = _text_problem(name, row.get(name, _MISSING))
            if problem:
                return problem
        return self.check(row) if self.check is not None else None

    def direction(self, metric: str) -> bool:
        """True when higher is better for ``metric`` (``loss`` is lower-better)."""
        base = metric.split("/")[-1]
        if base == "loss":
            return False
        for m in self.metrics:
            if m.name == base:
                return m.higher_is_better
        raise KeyError(f"metric {metric!r} is not one of task {self.name}'s: loss, "
                       + ", ".join(m.name for m in self.metrics))


# ---- input formatters: raw row -> text_a, text_b (or a list of pairs for multiple choice) -----------
def _pair(first: str, second: str) -> Callable:
    return lambda row: (row[first], row[second])


def _single(field: str) -> Callable:
    return lambda row: (row[field], None)


COPA_CONNECTIVES = {"cause": "because", "effect": "so"}


def _copa(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    # PETuning: text_a = premise + " because" (cause) / " so" (effect), text_b = the choice.
    first = f"{row['premise']} {COPA_CONNECTIVES[row['question']]}"
    return [(first, row["choice1"]), (first, row["choice2"])]


def _copa_problem(row: Mapping[str, Any]) -> str | None:
    if row.get("question") not in COPA_CONNECTIVES:
        return f"question {row.get('question')!r} not in the task's set {', '.join(COPA_CONNECTIVES)}"
    return None


def _wsc_target(row: Mapping[str, Any]) -> Mapping[str, Any]:
    return row["target"] if isinstance(row.get("target"), Mapping) else row


def _wsc(row: Mapping[str, Any]) -> tuple[str, str]:
    target = _wsc_target(row)
    return f"{target['span2_text']}: {row['text']}", target["span1_text"]


def _wsc_problem(row: Mapping[str, Any]) -> str | None:
    target = _wsc_target(row)
    for key in ("span1_text", "span2_text"):
        problem = _text_problem(key, target.get(key, _MISSING))
        if problem:
            return problem
    return None


def _wic(row: Mapping[str, Any]) -> tuple[str, None]:
    return f"{row['sentence1']} {row['sentence2']} Does {row['word']} have the same meaning in both sentences?", None


_MISSING = object()


def _text_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the text field ``name`` (None when it can)."""
    if value is _MISSING:
        return f"field {name!r} is missing"
    if value is None:
        return f"field {name!r} is null (expected text)"
    if not isinstance(value, str):
        return f"field {name!r} is {type(value).__name__} {value!r} (expected text)"
    return None


ACC = MetricSpec("accuracy")
F1 = MetricSpec("f1")
F1_MACRO = MetricSpec("f1_macro")
MCC = MetricSpec("mcc")
PEARSON = MetricSpec("pearson")
SPEARMAN = MetricSpec("spearman")
BOOL = ("False", "True")

_GLUE_TSV = {"delimiter": "\t", "quoting": 3}

TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} registered twice")
    TASKS[spec.name] = spec
    return spec


# SuperGLUE (JSONL, SuperGLUE zip layout). Train sizes: the official releases.
register(TaskSpec("cb", "super_glue", "classification", ("premise", "hypothesis"),
                  ("entailment", "contradiction", "neutral"), "label", (F1_MACRO, ACC), 250,
                  {"dir": "super_glue/CB", "train": "train.jsonl", "dev": "val.jsonl"},
                  ("aps/super_glue", "cb", {"train": "train", "dev": "validation"}),
                  _pair("premise", "hypothesis"), primary="f1_macro"))
register(TaskSpec("copa", "super_glue", "multiple_choice", ("premise", "choice1", "choice2", "question"),
                  ("choice1", "choice2"), "label", (ACC,), 400,
                  {"dir": "super_glue/COPA", "train": "train.jsonl", "dev": "val.jsonl"},
                  ("aps/super_glue", "copa", {"train": "train", "dev": "validation"}), _copa, num_choices=2,
                  input_version=2,
                  check=_copa_problem))
register(TaskSpec("wsc", "super_glue", "classification", ("text",), BOOL, "label", (ACC,), 554,
                  {"dir": "super_glue/WSC", "train": "train.jsonl", "dev": "val.jsonl"},
                  ("aps/super_glue", "wsc.fixed", {"train": "train", "dev": "validation"}), _wsc,
                  check=_wsc_problem))
register(TaskSpec("wic", "super_glue", "classification", ("word", "sentence1", "sentence2"), BOOL, "label",
                  (ACC,), 5428, {"dir": "super_glue/WiC", "train": "train.jsonl", "dev": "val.jsonl"},
                  ("aps/super_glue", "wic", {"train": "train", "dev": "validation"}), _wic, input_version=2))
register(TaskSpec("boolq", "super_glue", "classification", ("question", "passage"), BOOL, "label", (ACC,), 9427,
                  {"dir": "super_glue/BoolQ", "train": "train.jsonl", "dev": "val.jsonl"},
                  ("aps/super_glue", "boolq", {"train": "train", "dev": "validation"}),
                  _pair("question", "passage")))
register(TaskSpec("rte", "super_glue", "classification", ("premise", "hypothesis"),
                  ("entailment", "not_entailment"), "label", (ACC,), 2490,
                  {"dir": "super_glue/RTE", "train": "train.jsonl", "dev": "val.jsonl"},
                  ("aps/super_glue", "rte", {"train": "train", "dev": "validation"}),
                  _pair("premise", "hypothesis")))
# GLUE (TSV, download_glue_data.py layout).
register(TaskSpec("glue_rte", "glue", "classification", ("sentence1", "sentence2"),
                  ("entailment", "not_entailment"), "label", (ACC,), 2490,
                  {"dir": "glue/RTE", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "rte", {"train": "train", "dev": "validation"}),
                  _pair("sentence1", "sentence2")))
register(TaskSpec("mrpc", "glue", "classification", ("#1 String", "#2 String"), ("0", "1"), "Quality",
                  (F1, ACC), 3668,
                  {"dir": "glue/MRPC", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "mrpc", {"train": "train", "dev": "validation"}),
                  _pair("#1 String", "#2 String"), primary="f1"))
register(TaskSpec("stsb", "glue", "regression", ("sentence1", "sentence2"), (), "score",
                  (PEARSON, SPEARMAN), 5749,
                  {"dir": "glue/STS-B", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "stsb", {"train": "train", "dev": "validation"}),
                  _pair("sentence1", "sentence2")))
register(TaskSpec("cola", "glue", "classification", ("sentence",), ("0", "1"), "label", (MCC, ACC), 8551,
                  {"dir": "glue/CoLA", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV,
                   "column_names": ["source", "label", "original_label", "sentence"]},
                  ("nyu-mll/glue", "cola", {"train": "train", "dev": "validation"}), _single("sentence"),
                  primary="mcc"))
register(TaskSpec("sst2", "glue", "classification", ("sentence",), ("0", "1"), "label", (ACC,), 67349,
                  {"dir": "glue/SST-2", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "sst2", {"train": "train", "dev": "validation"}), _single("sentence")))
register(TaskSpec("qnli", "glue", "classification", ("question", "sentence"), ("entailment", "not_entailment"),
                  "label", (ACC,), 104743,
                  {"dir": "glue/QNLI", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "qnli", {"train": "train", "dev": "validation"}),
                  _pair("question", "sentence")))
register(TaskSpec("qqp", "glue", "classification", ("question1", "question2"), ("0", "1"), "is_duplicate",
                  (ACC, F1), 363846,
                  {"dir": "glue/QQP", "train": "train.tsv", "dev": "dev.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "qqp", {"train": "train", "dev": "validation"}),
                  _pair("question1", "question2")))
register(TaskSpec("mnli", "glue", "classification", ("sentence1", "sentence2"),
                  ("entailment", "neutral", "contradiction"), "gold_label", (ACC,), 392702,
                  {"dir": "glue/MNLI", "train": "train.tsv", "dev": "dev_matched.tsv", **_GLUE_TSV},
                  ("nyu-mll/glue", "mnli", {"train": "train", "dev": "validation_matched"}),
                  _pair("sentence1", "sentence2")))
# MNLI with the mismatched validation set as its held-out split (the module-wise paper's MNLI_mm column): the
# same training data, so an mnli run can score it as an OOD set (data.ood) with the same best checkpoint.
_MNLI = TASKS["mnli"]
register(replace(_MNLI, name="mnli_mm", local={**_MNLI.local, "dev": "dev_mismatched.tsv"},
                 hub=(_MNLI.hub[0], _MNLI.hub[1], {**_MNLI.hub[2], "dev": "validation_mismatched"})))

# Hub label columns are integers already; these map hub column names where they differ from the files.
HUB_COLUMNS: dict[str, dict[str, str]] = {
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    "stsb": {"label": "score"},
    "qqp": {"label": "is_duplicate"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
}
HUB_COLUMNS["mnli_mm"] = HUB_COLUMNS["mnli"]


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``.

    Raises:
        ValueError: unknown task, naming the known ones.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def task_names() -> list[str]:
    return sorted(TASKS)
