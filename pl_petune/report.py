"""``petune report``: the tables and figures of "Revisiting PETuning" from a results store.

Reads the complete records of a store (:class:`pl_petune.store.Store`), computes the statistics with the
pure functions of :mod:`pl_petune.stats`, and writes ``table2``, ``table3``, ``table4`` (when the store holds
weight-init or data-order series), ``upper_bound`` and ``ood`` (in- vs out-of-distribution scores, when runs
declared ``data.ood``) as Markdown, CSV and LaTeX, plus the figures
``fig_stability.png``, ``fig_density.png``, ``fig_spread.png`` and ``upper_bound.png``. Table 2's Markdown
is printed to stdout. See docs/reports.md.

Example:
    petune report --store runs/results.sqlite --out reports/ --test welch --alternative one-sided --alpha 0.05
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pl_petune.cli import UsageError
from pl_petune.records import atomic_write_text
from pl_petune.stats.core import ALTERNATIVES, TESTS, observations
from pl_petune.stats.tables import Settings, analyze, table2, table3, table4, to_csv, to_latex, to_markdown, upper_bound

FORMATS = ("md", "csv", "tex", "png")
SPREAD_X = ("steps", "train_size")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petune report", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", action="append", default=None,
                   help="results store (SQLite), repeatable (one per node, merged by run key); "
                        "default $PETUNE_STORE or runs/results.sqlite unless --wandb is given")
    p.add_argument("--runs", action="append", default=None, metavar="DIR",
                   help="read the complete records of the run folders under DIR (repeatable; e.g. a cluster's "
                        "shared run.out_dir)")
    p.add_argument("--wandb", action="append", default=None, metavar="ENTITY/PROJECT[/SWEEP_ID]",
                   help="read the records `petune fit` logged to these W&B runs too (online; repeatable)")
    p.add_argument("--out", default="reports", help="output folder (created)")
    p.add_argument("--format", default="md,csv,tex,png", help="comma-separated subset of: " + ", ".join(FORMATS))
    p.add_argument("--baseline", default=None,
                   help="column every other is tested against (default: finetune, else FT / Full-FT)")
    p.add_argument("--columns", default="name", choices=("name", "method"),
                   help="label columns by the run's name (run.name, e.g. EH-FT_LoRA; falls back to the method) "
                        "or by the method class's registry name")
    p.add_argument("--test", default="welch", help="significance test: " + ", ".join(TESTS))
    p.add_argument("--alternative", default="one-sided", help="one-sided (the paper) or two-sided")
    p.add_argument("--alpha", default="0.05", help="significance level in (0, 1)")
    p.add_argument("--holm", action="store_true", help="Holm-correct p-values within each table")
    p.add_argument("--ddof", type=int, default=1, choices=(0, 1), help="std's delta degrees of freedom")
    p.add_argument("--protocol", action="append", default=None,
                   help="keep only runs of this protocol (repeatable); default: all")
    p.add_argument("--task", action="append", default=None, help="keep only this task (repeatable)")
    p.add_argument("--method", action="append", default=None, help="keep only this method (repeatable)")
    p.add_argument("--group-by", action="append", default=[], metavar="PATH",
                   help="split columns by a record field, e.g. hparams.lora_r (repeatable)")
    p.add_argument("--spread-x", default="steps", help="x axis of fig_spread: steps or train_size")
    p.add_argument("--digits", type=int, default=1, help="decimals printed (the paper's layout: 1)")
    return p


def _choices(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; choose from: {', '.join(allowed)}")
    return value


def _filter(records: list[dict], field: str, wanted: list[str] | None) -> list[dict]:
    if not wanted:
        return records
    have = sorted({str(r.get(field)) for r in records})
    bad = [w for w in wanted if w not in have]
    if bad:
        raise UsageError(f"no runs with {field} {bad[0]!r}; the store has: {', '.join(have)}")
    return [r for r in records if str(r.get(field)) in wanted]


def _read_records(stores: list[str] | None, wandb_paths: list[str] | None,
                  runs_dirs: list[str] | None = None) -> list[dict]:
    """Complete records of every source, one per run key (the latest wins: see wandb_source.merge_records)."""
    from pl_petune.store import Store, StoreError, default_store_path
    from pl_petune.wandb_source import merge_records, records_from_wandb

    from pl_petune.index import records_from_dirs

    if not stores and not wandb_paths and not runs_dirs:
        stores = [str(default_store_path())]
    sources: list[list[dict]] = [records_from_dirs(runs_dirs)] if runs_dirs else []
    for store in stores or []:
        path = Path(store)
        if not path.is_file():
            raise UsageError(f"store {str(path)!r} does not exist; pass --store PATH of a results store")
        try:
            sources.append(Store(path).records())
        except StoreError as err:
            raise UsageError(str(err)) from None
    for wpath in wandb_paths or []:
        recs, skipped = records_from_wandb(wpath)
        print(f"petune report: {len(recs)} complete records from W&B {wpath}"
              + (f" ({skipped} runs without one skipped)" if skipped else ""), file=sys.stderr)
        sources.append(recs)
    records = merge_records(*sources)
    if not records:
        where = ", ".join([*(stores or []), *(runs_dirs or []), *(wandb_paths or [])])
        raise UsageError(f"no complete runs in {where}")
    return records


def main(argv: list[str]) -> int:
    """Run ``petune report``; returns the exit code (user errors raise :class:`UsageError`)."""
    args = _parser().parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    for f in formats:
        _choices(f, FORMATS, "format")
    _choices(args.test, TESTS, "test")
    _choices(args.alternative, ALTERNATIVES, "alternative")
    _choices(args.spread_x, SPREAD_X, "--spread-x")
    try:
        alpha = float(args.alpha)
    except ValueError:
        alpha = -1.0
    if not 0 < alpha < 1:
        raise UsageError(f"alpha {args.alpha!r} must be a number in (0, 1), e.g. 0.05")

    records = _read_records(args.store, args.wandb, args.runs)
    if args.columns == "name":
        # Two-stage methods are FullFinetune + a callback: the recipe's run.name tells LP-FT from FT.
        records = [{**r, "method": r.get("name") or r["method"]} for r in records]
    records = _filter(records, "protocol", args.protocol)
    records = _filter(records, "task", args.task)
    records = _filter(records, "method", args.method)
    methods = sorted({r["method"] for r in records})
    if args.baseline is None:
        args.baseline = next((m for m in ("finetune", "FT", "Full-FT", "Finetuning (reproduce)") if m in methods),
                             "finetune")
    if args.baseline not in methods:
        raise UsageError(f"baseline {args.baseline!r} has no runs; methods in the store: {', '.join(methods)}")

    try:
        obs = observations(records, group_by=args.group_by)
        settings = Settings(baseline=args.baseline, test=args.test, alternative=args.alternative, alpha=alpha,
                            holm=args.holm, ddof=args.ddof, digits=args.digits)
        analysis = analyze(obs, settings)
    except ValueError as err:
        raise UsageError(str(err)) from None

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from pl_petune.stats.ood import ood_table

    grids = [table2(analysis), table3(analysis), table4(analysis), upper_bound(analysis),
             ood_table(records, ddof=args.ddof, digits=args.digits)]  # None unless runs declared data.ood
    written: list[Path] = []
    for grid in (g for g in grids if g is not None):
        for fmt, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
            if fmt in formats:
                atomic_write_text(out / f"{grid.name}.{fmt}", render(grid))
                written.append(out / f"{grid.name}.{fmt}")
    if "png" in formats:
        from pl_petune import figures

        for name, draw in (("fig_stability", figures.stability), ("fig_density", figures.density),
                           ("upper_bound", figures.upper_bounds)):
            draw(analysis, out / f"{name}.png")
            written.append(out / f"{name}.png")
        figures.spread(analysis, out / "fig_spread.png", x=args.spread_x)
        written.append(out / "fig_spread.png")
    print(to_markdown(grids[0]))
    print(f"wrote {len(written)} files to {out}/ from {len(obs)} runs")
    return 0
