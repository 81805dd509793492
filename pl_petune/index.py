"""Run folders are the source of truth; a results store is an index of them that ``petune index`` rebuilds.

Every ``petune fit`` writes its record atomically to ``<run.out_dir>/<task>/<method>/<run key>/record.json``.
Nodes of a cluster share the folder tree, never one SQLite file: each node may keep a store of its own, and
``petune index runs/ [--store S]`` rebuilds one store from any set of folders (``petune runs --runs DIR`` and
``petune report --runs DIR`` read the folders directly, writing nothing).

Example:
    petune index /shared/petune/runs --store runs/results.sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pl_petune.cli import UsageError

RECORD_FILE = "record.json"
# Folders a run writes inside its run folder that never hold another run's record.
_SKIP_DIRS = {"checkpoints", "logs", "eval", "wandb", "lightning_logs"}


def read_record(run_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The record in a run folder, or None when there is none or it cannot be read (a torn file cannot
    exist: records are written atomically, so an unreadable one is foreign and ignored)."""
    path = Path(run_dir) / RECORD_FILE
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("run_key"), str) else None


def folder_is_complete(run_dir: str | os.PathLike) -> bool:
    """Whether the run folder holds a complete record (a run that must not train again without rerun)."""
    rec = read_record(run_dir)
    return rec is not None and rec.get("status") == "complete"


def record_files(roots: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """Every ``record.json`` under ``roots`` (a root may itself be a run folder), in sorted order."""
    for root in roots:
        root = Path(root)
        if (root / RECORD_FILE).is_file():
            yield root / RECORD_FILE
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            if Path(dirpath) != root and RECORD_FILE in filenames:
                yield Path(dirpath) / RECORD_FILE


def records_from_dirs(roots: Sequence[str | os.PathLike], status: Optional[str] = "complete",
                      warn: bool = True) -> list[dict[str, Any]]:
    """The records of the run folders under ``roots`` (of one status, or all when ``status`` is None),
    one per run key (the latest ``created_at`` wins if two folders hold the same run).

    Raises:
        UsageError: a root that is not a folder.
    """
    from pl_petune.records import SCHEMA_VERSION

    for root in roots:
        if not Path(root).is_dir():
            raise UsageError(f"{str(root)!r} is not a folder; give the run.out_dir that holds the run folders "
                             "(e.g. runs/)")
    by_key: dict[str, dict[str, Any]] = {}
    skipped = 0
    for path in record_files(roots):
        rec = read_record(path.parent)
        if rec is None or not isinstance(rec.get("schema"), int) or rec["schema"] > SCHEMA_VERSION:
            skipped += 1
            continue
        if status is not None and rec.get("status") != status:
            continue
        old = by_key.get(rec["run_key"])
        if old is None or str(rec.get("created_at")) >= str(old.get("created_at")):
            by_key[rec["run_key"]] = rec
    if skipped and warn:
        print(f"petune: {skipped} record.json file(s) under {', '.join(map(str, roots))} skipped (unreadable or "
              "a newer schema)", file=sys.stderr)
    return sorted(by_key.values(), key=lambda r: (str(r.get("created_at")), r["run_key"]))


def rebuild(store_path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> dict[str, int]:
    """Index the run folders under ``roots`` into the store at ``store_path`` (created if absent).

    A complete folder record replaces the store's row of that run unless the row holds the very same record;
    an incomplete one (failed, interrupted, running) is added only when the store has no row for the run,
    so an index never overwrites what a live runner tracks.

    Returns:
        Counts: ``added``, ``updated``, ``unchanged``, ``kept`` (incomplete records not indexed), ``invalid``
        (records that fail :func:`pl_petune.records.validate`, named on stderr and skipped).
    """
    from pl_petune.records import validate
    from pl_petune.store import Store

    records = records_from_dirs(roots, status=None)
    valid = []
    for rec in records:
        try:
            validate(rec)
            valid.append(rec)
        except ValueError as err:
            print(f"petune index: {rec.get('run_dir') or rec['run_key']}: record not indexed ({err})", file=sys.stderr)
    store = Store(store_path)
    counts = {"added": 0, "updated": 0, "unchanged": 0, "kept": 0, "invalid": len(records) - len(valid)}
    todo = []
    for rec in valid:
        have = store.get(rec["run_key"])
        status = store.status(rec["run_key"])
        if rec.get("status") != "complete":
            if status is None:
                todo.append(rec)
                counts["added"] += 1
            else:
                counts["kept"] += 1
            continue
        if have is not None and have.get("status") == "complete" and have.get("created_at") == rec.get("created_at"):
            counts["unchanged"] += 1
            continue
        todo.append(rec)
        counts["added" if status is None else "updated"] += 1
    store.put_many(todo, replace=True)  # the folders are the truth: their complete records replace rows
    return counts


def main(argv: Optional[list[str]] = None) -> int:
    """``petune index DIR... [--store S]``: rebuild a results store from run folders."""
    from pl_petune.store import default_store_path

    p = argparse.ArgumentParser(prog="petune index", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders holding run folders (run.out_dir), or run folders")
    p.add_argument("--store", default=None, help="the store to fill (default: $PETUNE_STORE or runs/results.sqlite)")
    args = p.parse_args(argv)
    store = Path(args.store or default_store_path())
    if store.exists() and not store.is_file():
        raise UsageError(f"--store {str(store)!r} is a folder; give the path of a .sqlite file")
    blocked = next((p for p in store.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UsageError(f"--store {str(store)!r}: {str(blocked)!r} is a file, not a folder; choose another path")
    counts = rebuild(store, args.dirs)
    print(f"petune index: {store}: {counts['added']} added, {counts['updated']} updated, {counts['unchanged']} "
          f"unchanged, {counts['kept']} incomplete folder record(s) left to the store's own row"
          + (f", {counts['invalid']} invalid" if counts["invalid"] else ""), file=sys.stderr)
    return 0


__all__ = ["RECORD_FILE", "read_record", "folder_is_complete", "record_files", "records_from_dirs", "rebuild",
           "main"]
