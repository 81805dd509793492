"""Building a run record from what a run knows: plain functions over plain values (no torch, no trainer).

:class:`~pl_petune.recorder.RunRecorder` gathers the facts from the trainer, module and data module and calls
:func:`start_record` when fit starts and :func:`complete_record` when the held-out pass ends; the schema is
in :mod:`pl_petune.records`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from pl_petune.records import SCHEMA_VERSION, flatten, git_revision, now_iso, versions

PARAM_FIELDS = ("trainable_params", "total_params", "trainable_percent", "param_denominator")


def start_record(
    *,
    run_key: str,
    spec: Any,
    method: str,
    model_class: str,
    backbone: Optional[str],
    protocol: str,
    leaky: bool,
    init_seed: Optional[int],
    data_seed: Optional[int],
    seed_mode: str,
    hparams: Mapping[str, Any],
    identity: Mapping[str, Any],
    monitor: Optional[str],
    sizes: Mapping[str, int],
    param_report: Mapping[str, Any],
    run_dir: str,
    resumed: bool,
    name: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
    headline: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """The ``running`` record of a run whose fit starts (every field known before training).

    Args:
        spec: the task's :class:`~pl_petune.tasks.TaskSpec`.
        param_report: the module's ``parameter_report()`` (trainable and total counts, denominator).
        sizes: example counts of the protocol's ``train``, ``dev`` and ``test`` parts.
        headline: ``{task: metric}`` the study reports this run's task by (``--run.headline``), or None.
        Other arguments are the record fields of the same name (see :mod:`pl_petune.records`).
    """
    return {
        "schema": SCHEMA_VERSION, "run_key": run_key, "status": "running", "name": name,
        "task": spec.name, "benchmark": spec.benchmark, "band": spec.band, "method": method,
        "model_class": model_class, "backbone": backbone, "protocol": protocol, "leaky": bool(leaky),
        "init_seed": init_seed, "data_seed": data_seed, "seed_mode": seed_mode,
        "hparams": dict(hparams), "identity": dict(identity), "primary_metric": spec.primary_metric.name,
        "higher_is_better": spec.primary_metric.higher_is_better, "monitor": monitor,
        "train_size": sizes.get("train"), "dev_size": sizes.get("dev"), "test_size": sizes.get("test"),
        **{k: param_report[k] for k in PARAM_FIELDS},
        "versions": versions(), "git_rev": git_revision(), "created_at": now_iso(),
        "run_dir": run_dir, "resumed": bool(resumed), "extra": dict(extra or {}),
        "headline": dict(headline) if headline else None,
    }


def complete_record(
    started: Mapping[str, Any],
    *,
    best_path: str,
    best_score: Optional[float],
    best_sha256: str,
    best_epoch: Optional[int],
    dev_metrics: Mapping[str, float],
    test_metrics: Mapping[str, float],
    epochs: int,
    steps: int,
    wall_time_s: float,
    majority_baseline: Optional[Mapping[str, float]],
    stop: Mapping[str, Any],
    mean_baseline: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The ``complete`` record: ``started`` plus selection, held-out scores and run length.

    Args:
        started: the record :func:`start_record` returned for this run.
        best_path: the best-on-dev checkpoint the held-out split was scored with; its hash is ``best_sha256``.
        stop: what :func:`stop_fields` returned at the end of fit.
        mean_baseline: regression only: the train-mean constant prediction's scores on the test split.
        extra: what the module and callbacks add (``record_extra()``), merged over ``started["extra"]``.
    """
    rec = dict(started)
    rec.update({
        "status": "complete", "created_at": now_iso(),
        "best_dev": best_score, "best_checkpoint_sha256": best_sha256, "best_epoch": best_epoch,
        "dev_metrics": dict(dev_metrics), "test_metrics": dict(test_metrics), "epochs": epochs, "steps": steps,
        "wall_time_s": round(wall_time_s, 2), "majority_baseline": majority_baseline,
        "mean_baseline": mean_baseline, **stop,
    })
    rec["extra"] = {**started.get("extra", {}), **(extra or {}), "best_checkpoint": best_path}
    return rec


STOP_REASONS = ("patience", "stopping_threshold", "divergence_threshold", "non_finite", "max_epochs", "max_steps",
                "max_time", "stopped_by_callback", "not_stopped")


def stop_fields(early_stopping: Optional[tuple[str, int, Optional[str]]], epochs: int, max_epochs: Optional[int],
                steps: int, max_steps: int, out_of_time: bool, should_stop: bool) -> dict[str, Any]:
    """Why and when fit stopped: ``early_stopped``, ``stop_reason`` (one of :data:`STOP_REASONS`), ``stop_epoch``.

    Args:
        early_stopping: ``(reason, epoch, message)`` of the EarlyStopping callback that stopped fit, reason one of
            ``patience``, ``stopping_threshold``, ``divergence_threshold``, ``non_finite``; None if none did.
        epochs: epochs trained (Lightning's ``current_epoch`` at the end of fit).
        max_epochs, steps, max_steps: the limits and the optimizer steps taken.
        out_of_time: the trainer's ``max_time`` ran out.
        should_stop: some callback asked the trainer to stop.

    Returns:
        ``stop_epoch`` is the 0-based index of the last epoch trained (None when none was).
    """
    if early_stopping is not None:
        reason, epoch, message = early_stopping
        return {"early_stopped": True, "stop_reason": reason, "stop_epoch": int(epoch), "stop_message": message}
    if max_epochs not in (None, -1) and epochs >= max_epochs:
        reason = "max_epochs"
    elif max_steps != -1 and steps >= max_steps:
        reason = "max_steps"
    elif out_of_time:
        reason = "max_time"
    elif should_stop:
        reason = "stopped_by_callback"
    else:
        reason = "not_stopped"
    return {"early_stopped": False, "stop_reason": reason, "stop_epoch": epochs - 1 if epochs > 0 else None,
            "stop_message": None}


def summary_line(record: Mapping[str, Any]) -> str:
    """A complete record in one line: held-out scores against the majority class, selection, cost."""
    metric = record["primary_metric"]
    names = [metric] + [k.split("/", 1)[1] for k in record["test_metrics"]
                        if k.split("/", 1)[1] not in (metric, "loss")]
    scores = ", ".join(f"{n} = {record['test_metrics'][f'test/{n}']:.4f}" for n in names)
    line = f"{record['task']} {record['method']} [{record['protocol']}] held-out {scores}"
    base = record.get("majority_baseline")
    if base:
        line += " (majority-class baseline: " + ", ".join(f"{n} = {base[n]:.4f}" for n in names if n in base) + ")"
    mean = record.get("mean_baseline")
    if mean:
        undefined = " and ".join(n for n in names if mean.get(n, 0) is None)
        line += (f"; MSE = {record['test_metrics'].get('test/loss', float('nan')):.4f} (train-mean constant "
                 f"baseline: MSE = {mean['mse']:.4f}" + (f"; its {undefined} undefined" if undefined else "") + ")")
    stop = record.get("stop_reason")
    stopped = f", stopped by {stop} in epoch {record.get('stop_epoch')}" if stop else ""
    return line + (f"; best dev epoch {record['best_epoch']}, {record['epochs']} epochs{stopped}, "
                   f"{record['wall_time_s']:.0f}s")


def log_record_to_wandb(run: Any, record: Mapping[str, Any]) -> None:
    """Put ``record`` into a W&B run's summary: its scalars flat (W&B's tables), and the whole record as JSON
    under ``petune/record`` (what ``petune report --wandb`` reads back)."""
    from pl_petune.wandb_source import SUMMARY_KEY, summary_value

    summary = {k: v for k, v in flatten(record).items() if isinstance(v, (int, float, str))}
    summary[SUMMARY_KEY] = summary_value(record)
    run.summary.update(summary)
