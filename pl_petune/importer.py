"""``petune import FILE``: results from elsewhere (a paper's per-seed scores, another codebase, a W&B export)
into a results store, so ``petune report`` compares them with new runs.

Accepted files:

- **CSV or JSONL, long**: one row per score, columns ``task``, ``method``, ``seed`` (or ``init_seed`` and
  ``data_seed``), ``metric``, ``value``, optional ``protocol`` and ``name`` (the column label, e.g. ``FT``).
- **CSV or JSONL, wide**: no ``metric``/``value`` columns; each column named after a metric of the task
  (``f1_macro`` or ``test/f1_macro``) holds that score.
- **A W&B runs export** (the runs table's "Export CSV"): when it has a ``petune/record`` column (what
  ``petune fit`` logs), each row's record is imported as it is; otherwise it is read as a wide file, with
  config columns matched by their last dotted part (``data.task`` is ``task``) and only rows whose
  ``State`` is ``finished``.

Every row is checked before anything is written: a known task and a metric of it, a value inside the
metric's range in the declared unit (``--unit fraction|percent``; without it a file whose values only fit
percent is refused as ambiguous), integer seeds, a known protocol, no run given twice, and no run already
complete in the store unless ``--replace``. All records are then written in one transaction, or none.

Example:
    petune import paper_table2_per_seed.csv --unit percent --protocol petuning --store runs/results.sqlite
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, cast

from pl_petune.cli import UsageError
from pl_petune.record_checks import LEAKY_PROTOCOLS, METRIC_RANGES, PROTOCOLS, check_score
from pl_petune.records import SCHEMA_VERSION, RecordError, now_iso, run_key, validate

UNITS = ("fraction", "percent")
WANDB_RECORD = "petune/record"
ID_FIELDS = ("task", "method", "name", "protocol", "seed", "init_seed", "data_seed", "metric", "value")


class ImportFileError(UsageError):
    """A file that cannot be imported (named by row)."""


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV or JSONL file; numbers count the header as line 1 for CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ImportFileError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ImportFileError(f"{path} line {i}: not a JSON object ({err.msg})") from None
            if not isinstance(row, dict):
                raise ImportFileError(f"{path} line {i}: a JSON object per line expected, got {type(row).__name__}")
            yield i, row
        return
    if suffix not in (".csv", ".tsv"):
        raise ImportFileError(f"cannot tell the format of {path.name!r}; use a .csv, .tsv or .jsonl file")
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
    if not reader.fieldnames:
        raise ImportFileError(f"{path} is empty: no header row")
    dup = [k for k, n in Counter(reader.fieldnames).items() if n > 1]
    if dup:
        raise ImportFileError(f"{path}: column {dup[0]!r} appears twice in the header")
    for i, row in enumerate(reader, 2):
        if None in row:
            raise ImportFileError(f"{path} line {i}: more values than header columns")
        yield i, {k: v for k, v in row.items() if k is not None}


def _field(row: Mapping[str, Any], name: str) -> Any:
    """A row's ``name`` column, also matched as the last dotted part of a W&B config column (``data.task``)."""
    if name in row:
        return row[name]
    hits = [k for k in row if k.split(".")[-1] == name and "/" not in k]
    return row[hits[0]] if len(hits) == 1 else None


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _int_seed(v: Any, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {v!r} is not an integer") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{what} {v!r} is not an integer")
    return int(f)


def _number(v: Any, what: str) -> tuple[float, bool]:
    """(value, written with a % sign)."""
    pct = isinstance(v, str) and v.strip().endswith("%")
    if isinstance(v, bool):
        raise ValueError(f"{what} {v!r} is not a number")
    try:
        return float(v.strip().rstrip("%") if isinstance(v, str) else v), pct
    except (TypeError, ValueError):
        raise ValueError(f"{what} {v!r} is not a number") from None


def parse_rows(path: Path, unit: str | None, protocol: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of ``path`` (not yet written) and notes on rows skipped.

    Raises:
        ImportFileError: the first bad row, with how many rows are bad in all.
    """
    from pl_petune.tasks import TASKS

    raw = list(_rows(path))
    if not raw:
        raise ImportFileError(f"{path} holds no rows")
    if any(WANDB_RECORD in r for _, r in raw):
        return _wandb_records(path, raw)
    notes: list[str] = []
    if any("State" in r for _, r in raw):
        kept = [(i, r) for i, r in raw if str(r.get("State", "")).strip().lower() == "finished"]
        if len(kept) < len(raw):
            states = Counter(str(r.get("State")) for _, r in raw
                             if str(r.get("State", "")).strip().lower() != "finished")
            notes.append("skipped " + ", ".join(f"{n} {s}" for s, n in states.items())
                         + " W&B run(s) (State not finished)")
        raw = kept
    long = any("metric" in r or "value" in r for _, r in raw)
    if not any("State" in r for _, r in raw):  # a plain file (not W&B): a misspelt column would be dropped silently
        known = {*ID_FIELDS, *METRIC_RANGES, *(f"test/{m}" for m in METRIC_RANGES)}
        odd = [c for _, r in raw for c in r if c not in known]
        if odd:
            raise ImportFileError(f"{path}: column {odd[0]!r} is neither a field ({', '.join(ID_FIELDS)}) nor a "
                                  f"metric ({', '.join(METRIC_RANGES)}); rename or remove it")
    errors: list[str] = []
    scores: list[tuple[int, dict[str, Any], str, float, bool]] = []  # line, identity, metric, value, pct
    for line, row in raw:
        try:
            task = _field(row, "task")
            if _blank(task):
                raise ValueError("no task")
            task = str(task).strip()
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
            method = _field(row, "method")
            if _blank(method):
                raise ValueError("no method")
            seed, init, data = _field(row, "seed"), _field(row, "init_seed"), _field(row, "data_seed")
            if not _blank(seed):
                if not (_blank(init) and _blank(data)):
                    raise ValueError("give seed, or init_seed and data_seed, not both")
                init = data = _int_seed(seed, "seed")
                mode = "tied"
            elif _blank(init) or _blank(data):
                raise ValueError("no seed: give seed, or init_seed and data_seed")
            else:
                init, data, mode = _int_seed(init, "init_seed"), _int_seed(data, "data_seed"), "separate"
            proto = _field(row, "protocol")
            proto = str(proto).strip() if not _blank(proto) else (protocol or "train_split")
            if proto not in PROTOCOLS:
                raise ValueError(f"unknown protocol {proto!r}; known: {', '.join(PROTOCOLS)}")
            name = _field(row, "name")
            ident = {"task": task, "method": str(method).strip(), "protocol": proto, "init_seed": init,
                     "data_seed": data, "seed_mode": mode,
                     "name": None if _blank(name) else str(name).strip()}
            task_metrics = [m.name for m in TASKS[task].metrics]
            if long:
                metric = str(_field(row, "metric") or "").strip()
                metric = metric[5:] if metric.startswith("test/") else metric
                if metric not in task_metrics:
                    raise ValueError(f"metric {metric!r} is not one of {task}'s: {', '.join(task_metrics)}")
                if _blank(row.get("value")):
                    raise ValueError("no value")
                value, pct = _number(row.get("value"), f"value of {metric}")
                scores.append((line, ident, metric, value, pct))
            else:
                found = 0
                for col, v in row.items():
                    m = col[5:] if col.startswith("test/") else col
                    if m in METRIC_RANGES and not _blank(v):
                        if m not in task_metrics:
                            raise ValueError(f"column {col!r}: {m} is not one of {task}'s metrics: "
                                             f"{', '.join(task_metrics)}")
                        value, pct = _number(v, col)
                        scores.append((line, ident, m, value, pct))
                        found += 1
                if not found:
                    raise ValueError(f"no score: a metric/value pair or a column named after one of {task}'s "
                                     f"metrics ({', '.join(task_metrics)})")
        except ValueError as err:
            errors.append(f"line {line}: {err}")
    _raise_first(path, errors)

    bounded = [(line_no, m, v) for line_no, _, m, v, pct in scores if not pct]
    if unit is None:
        if any(pct for *_, pct in scores):
            unit = "percent"
        else:
            out = [(line_no, m, v) for line_no, m, v in bounded
                   if not math.isnan(v) and not METRIC_RANGES[m][0] <= v <= METRIC_RANGES[m][1]]
            if out:
                line_no, m, v = out[0]
                raise ImportFileError(f"{path}: the unit of the scores is ambiguous (line {line_no}: {m} = {v:g} fits "
                                   f"only percent, {len(bounded) - len(out)} values fit fractions); pass --unit "
                                   "percent or --unit fraction")
            unit = "fraction"
    by_run: dict[str, dict[str, Any]] = {}
    for line, ident, metric, value, pct in scores:
        if unit == "fraction" and pct:
            errors.append(f"line {line}: {metric} {value:g}% is a percent, but --unit fraction was given")
            continue
        if math.isnan(value):
            errors.append(f"line {line}: {metric} value nan is not a score (leave the row out)")
            continue
        percent = unit == "percent" or pct
        frac = value / 100 if percent else value
        try:
            check_score(metric, frac, f"line {line}: {metric}")
        except RecordError as err:
            lo, hi = METRIC_RANGES[metric]
            errors.append(f"line {line}: {metric} = {value:g}% is outside [{100 * lo:g}, {100 * hi:g}] %" if percent
                          else str(err))
            continue
        key = run_key({**ident, "source": "import"})
        rec = by_run.get(key)
        if rec is None:
            rec = by_run[key] = _record(key, ident, path)
        if f"test/{metric}" in rec["test_metrics"]:
            errors.append(f"line {line}: {ident['task']} / {ident['name'] or ident['method']} seed "
                          f"({ident['init_seed']}, {ident['data_seed']}) {metric} is given twice "
                          f"(first on line {rec['extra']['import_lines'][0]})")
            continue
        rec["test_metrics"][f"test/{metric}"] = frac
        rec["extra"]["import_lines"].append(line)
    _raise_first(path, errors)
    records = list(by_run.values())
    for rec in records:
        spec = TASKS[rec["task"]]
        have = [k[5:] for k in rec["test_metrics"]]
        rec["primary_metric"] = spec.primary_metric.name if spec.primary_metric.name in have else have[0]
        rec["higher_is_better"] = spec.direction(rec["primary_metric"])
    notes.append(f"unit: {unit}" + (" (scores divided by 100)" if unit == "percent" else ""))
    return records, notes


def _record(key: str, ident: Mapping[str, Any], path: Path) -> dict[str, Any]:
    from pl_petune.tasks import TASKS

    spec = TASKS[ident["task"]]
    rec = {"schema": SCHEMA_VERSION, "run_key": key, "status": "complete", "task": ident["task"],
           "benchmark": spec.benchmark, "band": spec.band, "method": ident["method"], "protocol": ident["protocol"],
           "leaky": ident["protocol"] in LEAKY_PROTOCOLS, "init_seed": ident["init_seed"],
           "data_seed": ident["data_seed"], "seed_mode": ident["seed_mode"], "hparams": {},
           "train_size": spec.n_train, "test_metrics": {}, "created_at": now_iso(),
           "extra": {"imported_from": str(path), "import_lines": []}}
    if ident["name"]:
        rec["name"] = ident["name"]
    return rec


def _wandb_records(path: Path, raw: list[tuple[int, dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    from pl_petune.record_checks import check_complete

    records: list[dict[str, Any]] = []
    errors: list[str] = []
    skipped = 0
    for line, row in raw:
        blob = row.get(WANDB_RECORD)
        if _blank(blob):
            skipped += 1
            continue
        try:
            rec = cast("dict[str, Any]", json.loads(blob) if isinstance(blob, str) else blob)
            validate(rec)
            if rec["status"] != "complete":
                skipped += 1
                continue
            check_complete(rec)
        except (ValueError, TypeError) as err:  # bad JSON, or a RecordError (a ValueError too)
            errors.append(f"line {line}: {WANDB_RECORD} is not a valid complete record ({err})")
            continue
        rec.setdefault("extra", {})["imported_from"] = str(path)
        records.append(rec)
    _raise_first(path, errors)
    return records, [f"skipped {skipped} W&B run(s) without a complete {WANDB_RECORD}"] if skipped else []


def _raise_first(path: Path, errors: list[str]) -> None:
    if errors:
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        raise ImportFileError(f"{path}: {errors[0]}{more}; nothing was imported")


def main(argv: list[str]) -> int:
    """Run ``petune import``; returns the exit code (user errors raise :class:`UsageError`)."""
    from pl_petune.store import Store, StoreError, default_store_path

    p = argparse.ArgumentParser(prog="petune import", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="CSV, TSV or JSONL of per-seed scores, or a W&B runs export CSV")
    p.add_argument("--store", default=None, help="results store (default $PETUNE_STORE or runs/results.sqlite)")
    p.add_argument("--unit", default=None, help="unit of the scores: fraction (0.7) or percent (70.0)")
    p.add_argument("--protocol", default=None,
                   help="protocol of rows without a protocol column (default train_split): " + ", ".join(PROTOCOLS))
    p.add_argument("--replace", action="store_true", help="overwrite runs already complete in the store")
    p.add_argument("--dry-run", action="store_true", help="check every row and print the summary; write nothing")
    args = p.parse_args(argv)
    if args.unit is not None and args.unit not in UNITS:
        raise UsageError(f"--unit {args.unit!r} unknown; choose from: {', '.join(UNITS)}")
    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise UsageError(f"--protocol {args.protocol!r} unknown; choose from: {', '.join(PROTOCOLS)}")
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no file {str(path)!r} to import")
    records, notes = parse_rows(path, args.unit, args.protocol)
    if not records:
        raise UsageError(f"{path}: no complete results to import" + (f" ({'; '.join(notes)})" if notes else ""))
    store_path = Path(args.store or default_store_path())
    try:
        if args.dry_run:
            store = Store(store_path, readonly=True) if store_path.exists() else None
            if store is not None:
                have = {r["run_key"] for r in store.records()}
                clash = [r["run_key"] for r in records if r["run_key"] in have]
                if clash and not args.replace:
                    raise UsageError(f"run {clash[0]!r} already has a complete record in {store_path}; "
                                     "--replace overwrites")
        else:
            Store(store_path).put_many(records, replace=args.replace)
    except (StoreError, RecordError) as err:
        raise UsageError(str(err)) from None
    cells = Counter((r["task"], r.get("name") or r["method"]) for r in records)
    tasks = sorted({t for t, _ in cells})
    columns = sorted({c for _, c in cells})
    n = sorted(set(cells.values()))
    verb = "would import" if args.dry_run else "imported"
    print(f"{verb} {len(records)} records into {store_path} from {path}: {len(tasks)} tasks ({', '.join(tasks)}), "
          f"{len(columns)} methods ({', '.join(columns)}), "
          f"{'-'.join(map(str, (n[0], n[-1]))) if len(n) > 1 else n[0]} seeds per cell; " + "; ".join(notes))
    return 0
