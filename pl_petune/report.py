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
from pl_petune.stats.tables import (
    HEADLINES,
    Settings,
    analyze,
    table2,
    table3,
    table4,
    to_csv,
    to_latex,
    to_markdown,
    upper_bound,
)

FORMATS = ("md", "csv", "tex", "png", "svg", "pdf", "html")
DEFAULT_FORMATS = "md,csv,tex,png,pdf"
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
    p.add_argument("--format", default=DEFAULT_FORMATS,
                   help="comma-separated subset of: " + ", ".join(FORMATS) + " (png/svg/pdf: the figures; html: one "
                        "self-contained study page, study.html)")
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
    p.add_argument("--digits", default="1", help="decimals printed, 0..6 (the paper's layout: 1; its Table 2: 2)")
    p.add_argument("--order", default=None, metavar="A,B,...",
                   help="column order, by the columns' names before --rename (default: the baseline, then the "
                        "paper's FT, Adapter, PT, LoRA, BitFit, then the rest)")
    p.add_argument("--rename", action="append", default=[], metavar="NAME=LABEL",
                   help="print column NAME as LABEL, e.g. prefix=PT (repeatable)")
    p.add_argument("--headline", action="append", default=[], metavar="TASK=METRIC|PRESET",
                   help="the metric a task's cells report, e.g. stsb=spearman (repeatable), or a paper's preset: "
                        + ", ".join(HEADLINES))
    p.add_argument("--task-labels", default="paper",
                   help="row labels: paper (CB, STS-B, BoolQ, ...) or name (the registry names cb, stsb, ...)")
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
    from pl_petune.index import records_from_dirs
    from pl_petune.store import Store, StoreError, default_store_path
    from pl_petune.wandb_source import merge_records, records_from_wandb

    if not stores and not wandb_paths and not runs_dirs:
        stores = [str(default_store_path())]
    sources: list[list[dict]] = [records_from_dirs(runs_dirs)] if runs_dirs else []
    for store in stores or []:
        path = Path(store)
        if not path.is_file():
            raise UsageError(f"store {str(path)!r} does not exist; pass --store PATH of a results store")
        try:
            sources.append(Store(path, readonly=True).records())
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


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k.strip() or not val.strip():
            raise UsageError(f"{flag} {v!r} is not NAME=VALUE")
        out[k.strip()] = val.strip()
    return out


def _headlines(values: list[str]) -> dict[str, str]:
    from pl_petune.stats.headlines import parse_headline

    out: dict[str, str] = {}
    for value in values:
        try:
            out.update(parse_headline(value, flag="--headline"))
        except ValueError as err:
            raise UsageError(str(err)) from None
    return out


def _check_group_by(records: list[dict], paths: list[str]) -> None:
    from pl_petune.stats.core import lookup

    for path in paths:
        if all(lookup(r, path) is None for r in records):
            top = sorted({k for r in records for k in r})
            hp = sorted({f"hparams.{k}" for r in records for k in (r.get("hparams") or {})})
            raise UsageError(f"--group-by {path!r}: no run has this field; fields: {', '.join(hp + top)}")


def _out_dir(value: str) -> Path:
    out = Path(value)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {value!r} is a file, not a folder; pass a folder for the tables and figures")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {value!r}: {str(parent)!r} is a file, not a folder")
            break
    return out


def main(argv: list[str]) -> int:
    """Run ``petune report``; returns the exit code (user errors raise :class:`UsageError`)."""
    args = _parser().parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats:
        raise UsageError(f"--format {args.format!r} names no format; choose from: {', '.join(FORMATS)}")
    for f in formats:
        _choices(f, FORMATS, "format")
    _choices(args.test, TESTS, "test")
    _choices(args.alternative, ALTERNATIVES, "alternative")
    _choices(args.spread_x, SPREAD_X, "--spread-x")
    _choices(args.task_labels, ("paper", "name"), "--task-labels")
    try:
        alpha = float(args.alpha)
    except ValueError:
        alpha = -1.0
    if not 0 < alpha < 1:
        raise UsageError(f"alpha {args.alpha!r} must be a number in (0, 1), e.g. 0.05")
    if not args.digits.strip().isdigit() or not 0 <= int(args.digits) <= 6:
        raise UsageError(f"--digits {args.digits!r} must be a whole number from 0 to 6")
    rename = _pairs(args.rename, "--rename")
    headline = _headlines(args.headline)
    out = _out_dir(args.out)

    records = _read_records(args.store, args.wandb, args.runs)
    method_of: dict[str, str] = {}
    if args.columns == "name":
        # Two-stage methods are FullFinetune + a callback: the recipe's run.name tells LP-FT from FT.
        for r in records:
            method_of.setdefault(r.get("name") or r["method"], r["method"])
        records = [{**r, "method": r.get("name") or r["method"]} for r in records]
    records = _filter(records, "protocol", args.protocol)
    records = _filter(records, "task", args.task)
    records = _filter(records, "method", args.method)
    _check_group_by(records, args.group_by)
    from pl_petune.stats.headlines import recorded_headlines

    try:  # what the runs declared (--run.headline); --headline on this command wins per task
        headline = {**recorded_headlines(records, settled=headline), **headline}
    except ValueError as err:
        raise UsageError(str(err)) from None
    methods = sorted({r["method"] for r in records})
    order = tuple(m.strip() for m in (args.order or "").split(",") if m.strip())
    unknown = [m for m in (*order, *rename) if m not in methods]
    if unknown:
        flag = "--order" if unknown[0] in order else "--rename"
        raise UsageError(f"{flag}: no column {unknown[0]!r}; the columns are: {', '.join(methods)}")
    if args.baseline is None:
        args.baseline = next((m for m in ("finetune", "FT", "Full-FT", "Finetuning (reproduce)") if m in methods),
                             "finetune")
    if args.baseline not in methods:
        raise UsageError(f"baseline {args.baseline!r} has no runs; methods in the store: {', '.join(methods)}")

    try:
        obs = observations(records, group_by=args.group_by, headline=headline)
        settings = Settings(baseline=args.baseline, test=args.test, alternative=args.alternative, alpha=alpha,
                            holm=args.holm, ddof=args.ddof, digits=int(args.digits), order=order, rename=rename,
                            method_of=method_of, task_labels=args.task_labels, headline=headline)
        analysis = analyze(obs, settings)
    except ValueError as err:
        raise UsageError(str(err)) from None

    from pl_petune.stats.ood import ood_table

    drafted = [table2(analysis), table3(analysis), table4(analysis), upper_bound(analysis),
               ood_table(records, analysis)]  # None unless runs declared data.ood
    grids = [g for g in drafted if g is not None]
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    for grid in grids:
        for fmt, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
            if fmt in formats:
                atomic_write_text(out / f"{grid.name}.{fmt}", render(grid))
                written.append(out / f"{grid.name}.{fmt}")
    figure_formats = [f for f in ("png", "svg", "pdf") if f in formats]
    skipped: list[str] = []
    if figure_formats or "html" in formats:
        from pl_petune import figures

        drawn = figures.draw_all(analysis, spread_x=args.spread_x)
        page_fmt = "svg"  # the page inlines vector figures
        page_figs: dict[str, tuple[str, bytes] | None] = {}
        for name, fig in drawn.items():
            if fig is None:
                skipped.append(name)
                page_figs[name] = None
                continue
            for fmt in dict.fromkeys([*figure_formats, *([page_fmt] if "html" in formats else [])]):
                data = figures.render(fig, fmt)  # rendered once per format: a file and the page share it
                if fmt in figure_formats:
                    written.append(figures.write_bytes(data, out / f"{name}.{fmt}"))
                if fmt == page_fmt:
                    page_figs[name] = (fmt, data)
        if "html" in formats:
            from pl_petune.html_report import study_page

            atomic_write_text(out / "study.html", study_page(analysis, grids, records, page_figs, out))
            written.append(out / "study.html")
        figures.close_all(drawn)
    print(to_markdown(grids[0]))
    if skipped:
        print(f"petune report: no figure {', '.join(skipped)} (nothing to draw: " +
              "; ".join(figures.WHY_EMPTY[n] for n in skipped) + ")", file=sys.stderr)
    print(f"wrote {len(written)} files to {out}/ from {len(obs)} runs")
    return 0
