"""Run records reduced to what the statistics read: :class:`Obs`, one per complete record, in a :class:`Column`.

Pure (no torch, no Lightning). The score of a record is ``test/<primary_metric>``, or the metric a study names
as its headline for the task (``petune report --headline`` or the runs' ``--run.headline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pl_petune.record_checks import METRIC_RANGES, check_score
from pl_petune.records import RecordError, test_score

SeedKey = tuple  # (init_seed, data_seed)


@dataclass(frozen=True)
class Column:
    """What a table column stands for: a method under one protocol (and an optional variant).

    Attributes:
        method: registry name, e.g. ``lora``.
        protocol: data protocol of the runs, e.g. ``train_split`` or ``leaky``.
        variant: ``key=value`` pairs from ``--group-by`` ("" when not split).
        leaky: True when the runs selected their checkpoint on the data they report (protocol ``leaky``).
    """

    method: str
    protocol: str
    variant: str = ""
    leaky: bool = False

    def label(self, show_protocol: bool = False, name: str | None = None) -> str:
        """Display name: ``name`` (default: the method), plus the variant and protocol when needed, plus
        ``[leaky]``."""
        out = name or self.method
        if self.variant:
            out += f" ({self.variant})"
        if show_protocol:
            out += f" @{self.protocol}"
        if self.leaky:
            out += " [leaky]"
        return out


@dataclass(frozen=True)
class Obs:
    """One run reduced to what the statistics read.

    Attributes:
        task: task name. column: the :class:`Column` of the run. band: ``low``/``medium``/``high`` or None.
        init_seed, data_seed: the run's seeds; tied: True when one seed drove both (``seed_mode=tied``).
        score: ``test/<primary_metric>`` (raw, not scaled). metric: the primary metric's name.
        higher_is_better: direction of ``metric``.
        trainable_params, trainable_percent, train_size, steps: run facts used by the figures (may be None).
        run_key: the record's key (links, notes).
    """

    task: str
    column: Column
    band: str | None
    init_seed: Any
    data_seed: Any
    tied: bool
    score: float
    metric: str
    higher_is_better: bool
    trainable_params: int | None = None
    trainable_percent: float | None = None
    train_size: int | None = None
    steps: float | None = None
    run_key: str = ""

    @property
    def seed(self) -> SeedKey:
        return (self.init_seed, self.data_seed)


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """Value at a dotted ``path`` of a record (``hparams.lr``), or None when absent."""
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def default_band(task: str) -> str | None:
    """The task registry's band of ``task``, or None for a task pl_petune does not know."""
    from pl_petune.tasks import get_task  # pure-Python registry; no torch

    try:
        return get_task(task).band
    except ValueError:
        return None


def headline_metric(task: str, metric: str) -> tuple[str, bool]:
    """``(metric, higher_is_better)`` after checking that ``metric`` is one of ``task``'s in the registry.

    Raises:
        ValueError: an unknown task, or a metric the task does not have (naming the task's metrics).
    """
    from pl_petune.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"headline for unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    names = [m.name for m in TASKS[task].metrics]
    if metric not in names:
        raise ValueError(f"headline metric {metric!r} is not one of {task}'s: {', '.join(names)}")
    return metric, TASKS[task].direction(metric)


def observations(records: Sequence[Mapping[str, Any]], group_by: Sequence[str] = (),
                 band_of: Callable[[str], str | None] = default_band,
                 headline: Mapping[str, str] | None = None) -> list[Obs]:
    """Reduce complete run records to :class:`Obs`, one per record.

    Args:
        records: run records (schema 1); only ``status == "complete"`` ones are read.
        group_by: dotted record paths (e.g. ``hparams.lr``) that split a method's column into variants.
        band_of: band of a task when a record carries none.
        headline: task -> the metric a study reports for it (the module-wise paper: ``stsb: spearman``,
            ``qqp: f1``); other tasks use each record's ``primary_metric``.

    Returns:
        The observations, in record order. A NaN score stays NaN (:func:`~pl_petune.stats.tables.analyze`
        leaves it out of its cell and says so).

    Raises:
        ValueError: one task reported under two metrics or two directions (the cells would not compare), or
            a record lacking its task's headline metric.
    """
    heads = {t: headline_metric(t, m) for t, m in (headline or {}).items()}
    out: list[Obs] = []
    seen: dict[str, tuple[str, bool]] = {}
    for rec in records:
        if rec.get("status", "complete") != "complete":
            continue
        task = rec["task"]
        if task in heads:
            metric, hib = heads[task]
            value = (rec.get("test_metrics") or {}).get(f"test/{metric}")
            if value is None:
                have = ", ".join(sorted(rec.get("test_metrics") or {})) or "none"
                raise ValueError(f"run {rec.get('run_key')!r} ({task}) has no test/{metric}, the study's headline "
                                 f"metric for {task}; it has: {have}")
            score = float(value)
        else:
            metric, hib = rec["primary_metric"], bool(rec["higher_is_better"])
            if f"test/{metric}" not in (rec.get("test_metrics") or {}):
                have = ", ".join(sorted(rec.get("test_metrics") or {})) or "none"
                raise ValueError(f"run {rec.get('run_key')!r} ({task}) has no test/{metric}, its primary metric; "
                                 f"it has: {have}")
            score = test_score(rec)
        if metric in METRIC_RANGES:  # a percent from an old store or another source must not print as 7000.0
            try:
                check_score(metric, score, f"run {rec.get('run_key')!r} ({task}) test/{metric}")
            except RecordError as err:
                raise ValueError(str(err)) from None
        if seen.setdefault(task, (metric, hib)) != (metric, hib):
            raise ValueError(f"task {task!r} has records with metric/direction {seen[task]} and {(metric, hib)}; "
                             f"a table compares one metric per task (name one: --headline {task}=METRIC)")
        variant = ",".join(f"{k.split('.')[-1]}={lookup(rec, k)}" for k in group_by)
        protocol = rec.get("protocol", "?")
        leaky = bool(rec.get("leaky")) or protocol in ("leaky", "dev_split_leaky")
        steps = rec.get("steps")
        out.append(Obs(
            task=task, column=Column(rec["method"], protocol, variant, leaky),
            band=rec.get("band") or band_of(task), init_seed=rec.get("init_seed"), data_seed=rec.get("data_seed"),
            tied=rec.get("seed_mode") == "tied", score=score, metric=metric, higher_is_better=hib,
            trainable_params=rec.get("trainable_params"), trainable_percent=rec.get("trainable_percent"),
            train_size=rec.get("train_size"), steps=None if steps is None else float(steps),
            run_key=str(rec.get("run_key", "")),
        ))
    return out
