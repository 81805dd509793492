"""How a study labels and orders its tables and figures: bands, the paper's method order, task and metric
names, and the headline presets. Every table and figure reads its labels and order from here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pl_petune.stats.headlines import HEADLINES  # noqa: F401  (the presets, importable from here too)

BANDS = ("low", "medium", "high")
BAND_TITLES = {"low": "Low", "medium": "Medium", "high": "High", None: "Other"}
# The paper's column order (Revisiting PETuning, Table 2: FT, Adapter, PT, LoRA, BitFit), by registry name and
# by the labels recipes and imports give them; other columns follow alphabetically.
METHOD_ORDER = ("finetune", "adapter", "prefix", "lora", "bitfit")
METHOD_ALIASES = {"ft": "finetune", "full-ft": "finetune", "fine-tuning": "finetune", "pt": "prefix",
                  "prefix tuning": "prefix", "prefix-tuning": "prefix"}
METRIC_TITLES = {"accuracy": "accuracy", "f1": "F1", "f1_macro": "macro-F1", "mcc": "Matthews corr.",
                 "pearson": "Pearson corr.", "spearman": "Spearman corr."}


def task_label(task: str) -> str:
    """The name papers print for ``task``: the benchmark's own spelling (``CB``, ``STS-B``, ``BoolQ``), read
    from the registry's data folder; ``glue_rte`` is ``RTE (GLUE)`` and ``mnli_mm`` ``MNLI-mm``."""
    from pl_petune.tasks import TASKS

    if task == "mnli_mm":
        return "MNLI-mm"
    spec = TASKS.get(task)
    if spec is None or "dir" not in spec.local:
        return task
    label = str(spec.local["dir"]).rstrip("/").split("/")[-1]
    return f"{label} (GLUE)" if task == "glue_rte" else label


def _registry() -> Mapping[str, Any]:
    from pl_petune.tasks import TASKS

    return TASKS


def _registry_size(task: str) -> float:
    from pl_petune.tasks import TASKS

    return float(TASKS[task].n_train) if task in TASKS else math.inf


def method_rank(label: str, method: str | None = None) -> int:
    """Position of a column in the paper's order (``len(METHOD_ORDER)`` for columns it does not have)."""
    for name in (method, label):
        if name is None:
            continue
        key = METHOD_ALIASES.get(name.lower(), name.lower())
        if key in METHOD_ORDER:
            return METHOD_ORDER.index(key)
    return len(METHOD_ORDER)
