"""``petune runs``: every run of a results store or of run folders, with its status, protocol and score.

Read from a store (``--store``, default ``$PETUNE_STORE`` or ``runs/results.sqlite``) or straight from run
folders (``--runs DIR``, repeatable: the folders are the truth, nothing is written). Runs of sweeps submitted
to SLURM (``petune sweep --slurm``) show their array task and its SLURM state in the ``slurm`` column, also
before their first record exists (status ``queued``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from pl_petune.sweep.cli import ArgParser
from pl_petune.sweep.spec import SweepError

COLUMNS = ("run_key", "status", "attempts", "sweep", "index", "task", "method", "protocol", "init_seed", "data_seed",
           "metric", "score", "slurm", "updated", "error")
EXTRA_STATUSES = ("stale", "queued", "interrupted")


def _item(key: str, status: str, rec: dict[str, Any], spec: dict[str, Any], attempts: Any = None,
          updated: Optional[float] = None, error: Optional[str] = None) -> dict[str, Any]:
    metric = rec.get("primary_metric")
    score = (rec.get("test_metrics") or {}).get(f"test/{metric}") if metric else None
    config = spec.get("config") or {}
    return {
        "run_key": key, "status": status, "attempts": attempts,
        "task": rec.get("task") or spec.get("task"), "method": rec.get("method") or spec.get("method"),
        "protocol": rec.get("protocol") or spec.get("protocol") or config.get("data.protocol"),
        "init_seed": rec.get("init_seed"), "data_seed": rec.get("data_seed"),
        "metric": f"test/{metric}" if metric else None, "score": score,
        "sweep": spec.get("sweep") or rec.get("name"), "index": spec.get("index"), "slurm": None,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(updated)) if updated else rec.get("created_at"),
        "error": (error or "")[:200] or None,
    }


def _planned(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        lines = (folder / "runs.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        try:
            spec = json.loads(line)
            out[spec["run_key"]] = spec
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _slurm_sweeps(store_path: Path) -> list[Path]:
    """Sweep folders beside a store that have SLURM submissions."""
    root = store_path.parent / "sweeps"
    return sorted(p.parent.parent for p in root.glob("*/slurm/submissions.jsonl")) if root.is_dir() else []


def _folder_status(rec: dict[str, Any], run_dir: Optional[str]) -> str:
    from pl_petune.sweep.claims import claim_alive, read_claim

    status = str(rec.get("status"))
    if status == "running" and run_dir:
        claim = read_claim(run_dir)
        if claim is not None and not claim_alive(claim):
            return "stale"
    return status


def rows_from_store(store_path: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per run of a store, plus the SLURM-submitted runs of its sweeps that it does not hold yet."""
    from pl_petune.index import read_record
    from pl_petune.store import Store, _owner_alive

    store_path = Path(store_path)
    store = Store(store_path)
    records = {r["run_key"]: r for r in store.records(status=None)}
    out, seen = [], set()
    for row in store.rows():
        spec = json.loads(row["spec"]) if row.get("spec") else {}
        st = row["status"]
        if st == "running" and not _owner_alive(row.get("owner"), row.get("heartbeat")):
            st = "stale"
        out.append(_item(row["run_key"], st, records.get(row["run_key"], {}), spec, row["attempts"],
                         row["updated_at"], row.get("error")))
        seen.add(row["run_key"])
    from pl_petune.sweep import slurm

    for folder in _slurm_sweeps(store_path):
        states = slurm.run_states(folder)
        for key, spec in _planned(folder).items():
            if key not in states:
                continue
            if key not in seen:
                rec = read_record(spec["run_dir"]) if spec.get("run_dir") else None
                status = _folder_status(rec, spec.get("run_dir")) if rec else "queued"
                if rec is None and states[key].split()[-1] not in slurm.LIVE_STATES:
                    status = "pending"
                out.append(_item(key, status, rec or {}, spec))
                seen.add(key)
            for item in out:
                if item["run_key"] == key:
                    item["slurm"] = states[key]
    return out


def rows_from_dirs(dirs: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per run folder under ``dirs`` (read only)."""
    from pl_petune.index import records_from_dirs

    out = []
    for rec in records_from_dirs(list(dirs), status=None):
        out.append(_item(rec["run_key"], _folder_status(rec, rec.get("run_dir")), rec, {}, None, None,
                         rec.get("error")))
    return out


def runs_table(store_path: Optional[str | os.PathLike] = None, status: Optional[str] = None,
               sweep: Optional[str] = None, runs_dirs: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The rows ``petune runs`` prints: of a store, or of run folders when ``runs_dirs`` is given.

    Each row: run_key, status (``stale`` when its owner is gone, ``queued`` when only SLURM holds it), attempts,
    sweep, index, task, method, protocol, seeds, the headline test metric and score, the SLURM task and state,
    the last update and the error of a failed run.
    """
    rows = rows_from_dirs(runs_dirs) if runs_dirs else rows_from_store(store_path)  # type: ignore[arg-type]
    return [r for r in rows if (not status or r["status"] == status) and (not sweep or r["sweep"] == sweep)]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The aligned table, failures' errors under their row, and a count per status."""
    shown = [c for c in COLUMNS[:-1] if c != "slurm" or any(r["slurm"] for r in rows)]
    table = [[_fmt(r[c]) for c in shown] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(shown)]
    print("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for r, t in zip(rows, table):
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
        if r["error"] and r["status"] == "failed":
            print(f"    error: {r['error']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{len(rows)} run(s): " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))


def main(argv: Optional[list[str]] = None) -> int:
    """``petune runs``: list a results store's (or run folders') runs with their status."""
    from pl_petune.store import ROW_STATUSES, default_store_path

    statuses = tuple(dict.fromkeys(ROW_STATUSES + EXTRA_STATUSES))
    p = ArgParser(prog="petune runs", description="List the runs of a results store, or of run folders, and "
                                                   "their status.")
    p.add_argument("--store", default=None, help="results store (default: $PETUNE_STORE or runs/results.sqlite)")
    p.add_argument("--runs", action="append", default=None, metavar="DIR",
                   help="read run folders under DIR instead of a store (repeatable; nothing is written)")
    p.add_argument("--status", default=None, help="only runs with this status: " + ", ".join(statuses))
    p.add_argument("--sweep", default=None, help="only runs of this sweep (its name)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--forget", action="append", default=None, metavar="RUN_KEY",
                   help="delete these runs' rows (repeatable; all or none) so the next sweep trains them again")
    args = p.parse_args(argv)
    if args.status is not None and args.status not in statuses:
        raise SweepError(f"--status {args.status!r} unknown; allowed: {', '.join(statuses)}")
    if args.runs and (args.store or args.forget):
        raise SweepError("--runs reads run folders; it does not combine with --store or --forget")
    if args.runs:
        rows = runs_table(status=args.status, sweep=args.sweep, runs_dirs=args.runs)
    else:
        path = Path(args.store or default_store_path())
        if not path.is_file():
            raise SweepError(f"no results store at {str(path)!r}; pass --store, set $PETUNE_STORE, or read run "
                             "folders with --runs DIR")
        if args.forget:
            from pl_petune.store import Store

            Store(path).forget(args.forget)  # a StoreError is a PetuneError: the CLI prints its one line
            print(f"forgot {len(args.forget)} run(s) in {path}: {', '.join(args.forget)}; rerun the sweep to train "
                  "them again", file=sys.stderr)
            return 0
        rows = runs_table(path, status=args.status, sweep=args.sweep)
    if args.format == "json":
        print(json.dumps(rows, indent=1, default=str))
    elif args.format == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    else:
        print_table(rows)
    return 0


runs_main = main

__all__ = ["COLUMNS", "runs_table", "rows_from_store", "rows_from_dirs", "print_table", "main", "runs_main"]
