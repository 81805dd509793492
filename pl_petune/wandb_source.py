"""Run records from W&B, for ``petune report --wandb ENTITY/PROJECT[/SWEEP_ID]``.

``petune fit`` with a ``WandbLogger`` puts its whole run record, as JSON, into the run's summary under
:data:`SUMMARY_KEY` (beside the flat scalars W&B's tables show). Reading it back gives the report exactly the
record the store would hold, so online sweeps (``wandb agent``, which never sees our store) and offline stores
feed the same tables. Runs without that key (not logged by ``petune fit``, or still running) are skipped and
counted.

Several W&B runs can carry one run key (an agent rerun of a crashed run, a run logged twice): one record per
key is kept, the latest by ``created_at``. Merging with stores follows the same rule (:func:`merge_records`).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

from pl_petune.errors import PetuneError
from pl_petune.record_checks import check_complete
from pl_petune.records import validate

SUMMARY_KEY = "petune/record"


class WandbSourceError(PetuneError):
    """W&B runs could not be read (no login, no network, a wrong path)."""


def summary_value(record: Mapping[str, Any]) -> str:
    """The summary entry ``petune fit`` logs: the record as compact, key-sorted JSON."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _parse_path(path: str) -> tuple[str, Optional[str]]:
    """``(project path, sweep path or None)`` of ``ENTITY/PROJECT[/SWEEP_ID]`` (or the sweep page's
    ``ENTITY/PROJECT/sweeps/SWEEP_ID``)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) == 4 and parts[2] == "sweeps":
        parts = [parts[0], parts[1], parts[3]]
    if len(parts) == 2:
        return "/".join(parts), None
    if len(parts) == 3:
        return "/".join(parts[:2]), "/".join(parts)
    raise WandbSourceError(f"W&B path {path!r} is not ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID")


def records_from_wandb(path: str, api: Optional[Any] = None) -> tuple[list[dict[str, Any]], int]:
    """Complete petune records of the W&B runs at ``path``; returns ``(records, skipped)``.

    ``api`` defaults to ``wandb.Api()`` (tests pass a stand-in with the same ``runs``/``sweep`` methods).
    """
    project, sweep = _parse_path(path)  # a malformed path is refused before any network call
    if api is None:
        try:
            import wandb

            api = wandb.Api()
        except Exception as err:  # no login, no network: wandb raises several types
            raise WandbSourceError(f"cannot reach W&B for {path!r} ({type(err).__name__}: {err}); run `wandb login`, "
                                   "or report from a store with --store") from None
    try:
        runs = list(api.sweep(sweep).runs if sweep else api.runs(project))
    except Exception as err:
        raise WandbSourceError(f"cannot list W&B runs of {path!r} ({type(err).__name__}: {err})") from None
    records, skipped = [], 0
    for run in runs:
        blob = run.summary.get(SUMMARY_KEY) if run.summary is not None else None
        if not blob:
            skipped += 1
            continue
        try:
            record = json.loads(blob)
            validate(record)
            if record["status"] == "complete":
                check_complete(record)
        except ValueError as err:  # bad JSON, or a RecordError (a ValueError too)
            raise WandbSourceError(f"W&B run {getattr(run, 'path', run)!r}: its {SUMMARY_KEY} is not a valid "
                                   f"record ({err})") from None
        if record["status"] != "complete":
            skipped += 1
            continue
        record.setdefault("extra", {})["wandb_run"] = "/".join(map(str, getattr(run, "path", []) or []))
        records.append(record)
    return records, skipped


def merge_records(*sources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run key over all sources: the latest ``created_at`` wins (ties: the earlier source)."""
    chosen: dict[str, dict[str, Any]] = {}
    for source in sources:
        for rec in source:
            key = rec["run_key"]
            if key not in chosen or str(rec.get("created_at", "")) > str(chosen[key].get("created_at", "")):
                chosen[key] = rec
    return list(chosen.values())
