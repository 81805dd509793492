"""Checks of a data module's declarations before anything loads: its files, its out-of-distribution sets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

from pl_petune.data.sources import load_split, local_file, resolve_data_dir
from pl_petune.errors import ConfigError
from pl_petune.tasks import get_task


@dataclass
class OODSet:
    """An out-of-distribution evaluation set: another task's split, its labels mapped onto the training task's.

    Read once after fit with the best checkpoint (LP-FT's motivation, Kumar et al. 2022: finetuning distorts
    pretrained features and loses out-of-distribution accuracy), scored with the training task's metrics.

    Args:
        task: registry name of the evaluation task, e.g. ``cb``.
        label_map: every label name of ``task`` → a label name of the training task, e.g. for RTE on CB
            ``{entailment: entailment, contradiction: not_entailment, neutral: not_entailment}``. May be left
            out when both tasks have the same labels in the same order (the identity map).
        split: which official split of ``task`` to read: ``dev`` (default) or ``train``.
    """

    task: str
    label_map: dict[str, str] = field(default_factory=dict)
    split: str = "dev"


def check_data_files(task: str, data_dir: Optional[str], ood: Optional[dict[str, Any]] = None) -> None:
    """Refuse a missing data folder or file of ``task`` (and of its OOD sets) in one line, without reading them.

    ``petune`` calls it before building the model and trainer; a data module meets the same files at setup.

    Args:
        task: registry name of the task.
        data_dir: as :class:`TaskDataModule` takes it (None: ``$PETUNE_DATA_DIR``, else the hub: nothing to check).
        ood: ``data.ood``: name → an :class:`OODSet` or a mapping with ``task`` and ``split``.

    Raises:
        DataError: the first missing file, naming it and what its folder holds.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        return
    wanted = [(get_task(task), "train"), (get_task(task), "dev")]
    for ood_set in (ood or {}).values():
        ood_task, ood_split = ((ood_set["task"], ood_set.get("split", "dev")) if isinstance(ood_set, dict)
                               else (ood_set.task, ood_set.split))
        wanted.append((get_task(ood_task), ood_split))
    for spec, split in wanted:
        if split in ("train", "dev") and not local_file(spec, split, root).is_file():
            load_split(spec, split, data_dir)  # raises: file not found, with the folder's contents


def check_ood(name: str, o: OODSet, train) -> OODSet:
    """Refuse an OOD set whose task, split or label map does not fit the training task (one line each)."""
    if isinstance(o, dict):  # Python callers may pass plain mappings
        unknown = sorted(set(o) - {"task", "label_map", "split"})
        if unknown:
            raise ConfigError(f"data.ood.{name}: unknown key {unknown[0]!r}; allowed: task, label_map, split")
        o = OODSet(**o)
    spec = get_task(o.task)
    if o.split not in ("train", "dev"):
        raise ConfigError(f"data.ood.{name}.split {o.split!r} is unknown; allowed: train, dev")
    if spec.kind != "classification" or train.kind != "classification":
        raise ConfigError(f"data.ood.{name}: OOD evaluation needs classification tasks; {o.task} is "
                          f"{spec.kind} and {train.name} is {train.kind}")
    if not o.label_map and tuple(spec.labels) == tuple(train.labels):  # same labels (e.g. MNLI matched/mismatched)
        o = replace(o, label_map={label: label for label in spec.labels})
    extra = sorted(set(o.label_map) - set(spec.labels))
    if extra:
        raise ConfigError(f"data.ood.{name}.label_map: {extra[0]!r} is not a label of {o.task}; allowed: "
                          f"{', '.join(spec.labels)}")
    missing = [label for label in spec.labels if label not in o.label_map]
    if missing:
        raise ConfigError(f"data.ood.{name}.label_map: label {missing[0]!r} of {o.task} is not mapped; map each "
                          f"of {', '.join(spec.labels)} to one of {train.name}'s: {', '.join(train.labels)}")
    bad = sorted(v for v in o.label_map.values() if v not in train.labels)
    if bad:
        raise ConfigError(f"data.ood.{name}.label_map: target {bad[0]!r} is not a label of {train.name}; "
                          f"allowed: {', '.join(train.labels)}")
    return o
