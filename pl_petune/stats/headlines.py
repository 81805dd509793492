"""The headline metric a study reports for each task: presets of the papers' main tables, the
``TASK=METRIC[,TASK=METRIC...]`` spelling shared by ``petune report --headline`` and ``--run.headline``, and the
study's headlines read back from its records (one metric per task, or a one-line refusal naming the runs)."""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

from pl_petune.stats.inputs import headline_metric

# Headline metric per task of each paper's main table (REFERENCE.md section 10).
HEADLINES: dict[str, dict[str, str]] = {
    "revisiting": {"cb": "f1_macro", "mrpc": "f1", "stsb": "pearson", "qqp": "accuracy", "cola": "mcc"},
    "modulewise": {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "stsb": "spearman"},
}


def parse_headline(text: str, flag: str = "headline") -> dict[str, str]:
    """``task -> metric`` from a preset name or comma-separated ``TASK=METRIC`` pairs (later pairs win).

    Args:
        text: what the user gave.
        flag: how the messages name the option (``--headline`` for ``petune report``).

    Raises:
        ValueError: a part that is neither a preset nor ``TASK=METRIC``, an unknown task, or a metric the task
            does not have (naming the task's metrics).

    Example:
        >>> parse_headline("modulewise,stsb=pearson")["stsb"]
        'pearson'
    """
    out: dict[str, str] = {}
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{flag} {text!r} names nothing; give TASK=METRIC or a preset: {', '.join(HEADLINES)}")
    for part in parts:
        if "=" not in part:
            if part not in HEADLINES:
                raise ValueError(f"{flag} {part!r} is neither TASK=METRIC nor a preset; presets: "
                                 f"{', '.join(HEADLINES)}")
            out.update(HEADLINES[part])
            continue
        task, _, metric = (s.strip() for s in part.partition("="))
        if not task or not metric:
            raise ValueError(f"{flag} {part!r} is not TASK=METRIC")
        try:
            headline_metric(task, metric)
        except ValueError as err:
            raise ValueError(f"{flag} {task}={metric}: {err}") from None
        out[task] = metric
    return out


def recorded_headlines(records: Sequence[Mapping[str, Any]], settled: Collection[str] = ()) -> dict[str, str]:
    """The headline metric per task that the runs themselves declared (``--run.headline``, record field
    ``headline``), for the tasks not in ``settled`` (those the report names itself).

    Raises:
        ValueError: two runs of one task declare different metrics (naming a run of each).
    """
    seen: dict[str, tuple[str, str]] = {}
    for rec in records:
        for task, metric in (rec.get("headline") or {}).items():
            if task in settled:
                continue
            key = str(rec.get("run_key"))
            if task in seen and seen[task][0] != metric:
                other_metric, other = seen[task]
                raise ValueError(f"runs disagree on the headline metric of {task}: run {other} declares "
                                 f"{other_metric}, run {key} declares {metric} (--run.headline); name one with "
                                 f"petune report --headline {task}=METRIC")
            seen.setdefault(task, (metric, key))
    return {t: m for t, (m, _) in seen.items()}


__all__ = ["HEADLINES", "parse_headline", "recorded_headlines"]
