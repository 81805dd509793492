"""Run records: one plain, JSON-able dict per run, with a schema version.

A record is the only thing statistics and reports read. It carries no torch objects, so ``stats/`` and
``report`` can run anywhere. Fields (schema 1):

=====================  ===========================================================================
``schema``             int, :data:`SCHEMA_VERSION`
``run_key``            deterministic hash of what identifies the run (see :func:`run_key`)
``status``             ``running`` | ``complete`` | ``failed`` | ``interrupted`` (stopped by a signal; resumable)
``task``               registry name, e.g. ``cb``; ``benchmark`` (``glue``/``super_glue``); ``band``
``method``             registry name, e.g. ``finetune``, ``lora``
``protocol``           ``train_split`` | ``petuning`` | ``dev_split`` | ``leaky`` | ``dev_split_leaky``
``leaky``              bool: a leaky protocol, or a test pass the user let leak (``dm.allow_leaky_test()``)
``init_seed``          seed of new parameters (head, PET layers, masks)
``data_seed``          seed of split (when seeded), data order and dropout
``seed_mode``          ``separate`` or ``tied`` (PETuning's one seed for both)
``hparams``            dict of the method/optimiser/data hyper-parameters
``primary_metric``     the task's headline metric name without prefix, e.g. ``f1_macro``
``higher_is_better``   direction of ``primary_metric`` (data, not code)
``monitor``            the dev metric used for early stopping/selection, e.g. ``dev/loss``
``best_dev``           value of ``monitor`` at the selected checkpoint; ``best_epoch``
``dev_metrics``        dict of dev metrics of the selected checkpoint (``dev/...``)
``test_metrics``       dict of held-out metrics of the selected checkpoint (``test/...``)
``epochs``, ``steps``  run length; ``train_size``, ``dev_size``, ``test_size``
``stop_reason``        why fit stopped: ``patience`` | ``stopping_threshold`` | ``divergence_threshold`` |
                       ``non_finite`` (the EarlyStopping callback) | ``max_epochs`` | ``max_steps`` | ``max_time``
                       | ``stopped_by_callback`` | ``not_stopped``; ``stop_epoch`` (0-based, last epoch trained);
                       ``early_stopped`` (bool: EarlyStopping stopped it); ``stop_message``
``majority_baseline``  classification: the train-majority class's held-out scores (else null)
``mean_baseline``      regression: ``prediction`` (train mean), its held-out ``mse`` (compare ``test/loss``);
                       ``pearson``/``spearman`` null: undefined for a constant prediction (else null)
``trainable_params``   count; ``total_params`` (denominator, see ``param_denominator``)
``trainable_percent``  100 * trainable / total
``wall_time_s``        seconds for fit + test
``versions``           dict: pl_petune, torch, transformers, lightning, ...; ``git_rev``
``created_at``         ISO-8601 UTC
``extra``              free dict (stage plan of two-stage methods, OOD metrics, ...)
``headline``           optional ``{task: metric}`` the study reports the run's task by (``--run.headline``)
``predictions``        optional: the predictions files beside ``record.json`` (``--run.save_predictions``)
=====================  ===========================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from pl_petune.errors import PetuneError

SCHEMA_VERSION = 1
STATUSES = ("running", "complete", "failed", "interrupted")
REQUIRED_COMPLETE = (
    "run_key", "task", "method", "protocol", "init_seed", "data_seed", "primary_metric",
    "higher_is_better", "test_metrics",
)


class RecordError(PetuneError, ValueError):
    """A record that does not follow the schema."""


def run_key(identity: Mapping[str, Any]) -> str:
    """Deterministic 16-hex key of a run's identity (task, method, protocol, seeds, hyper-parameters).

    Keys are order-independent (JSON with sorted keys), so the same run spelled twice gets the same key.
    """
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(nested: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: nested dicts become dotted keys; other values stay as they are."""
    out: dict[str, Any] = {}
    if isinstance(nested, Mapping):
        for k, v in nested.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = nested
    return out


def validate(record: Mapping[str, Any]) -> None:
    """Raise :class:`RecordError` naming the first problem with ``record``."""
    schema = record.get("schema")
    if schema != SCHEMA_VERSION:
        raise RecordError(f"record schema {schema!r} is not supported; this pl_petune reads schema {SCHEMA_VERSION}")
    status = record.get("status")
    if status not in STATUSES:
        raise RecordError(f"record status {status!r} unknown; allowed: {', '.join(STATUSES)}")
    if status == "complete":
        missing = [k for k in REQUIRED_COMPLETE if k not in record]
        if missing:
            raise RecordError(f"complete record {record.get('run_key')!r} lacks {', '.join(missing)}")
    try:
        json.dumps(record, allow_nan=True)
    except TypeError as err:
        raise RecordError(f"record is not JSON-able: {err}") from None


def test_score(record: Mapping[str, Any]) -> float:
    """The headline held-out score of a record (``test/<primary_metric>``)."""
    return float(record["test_metrics"][f"test/{record['primary_metric']}"])


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half of one (a temp file
    in the same folder, fsync, rename). The file gets the usual permissions (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o666 & ~mask)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """The git commit of the working tree at ``path`` (``+dirty`` when it has uncommitted changes).

    Changes under ``docs/`` do not count: results committed there (a store being filled, its logs) change no
    number a run computes."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)docs"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    from importlib import metadata

    out = {}
    for dist in ("pl-petune", "torch", "transformers", "lightning", "datasets", "peft", "adapters",
                 "torchmetrics", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
