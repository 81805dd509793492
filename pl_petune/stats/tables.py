"""The paper's tables as data, rendered to Markdown, CSV and LaTeX.

:func:`analyze` computes every number once (cells, comparisons, band averages, seed series); the ``table*``
functions lay them out as "Revisiting PETuning" prints them (Chen et al., EMNLP 2022: Tables 2-4 and the
upper bounds of Figure 3), and :func:`to_markdown`, :func:`to_csv`, :func:`to_latex` render a
:class:`Grid`. Scores are printed scaled (x100) with one decimal, e.g. ``70.3±2.1``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pl_petune.stats.core import (
    ALTERNATIVES,
    REGIMES,
    TESTS,
    BandAverage,
    Column,
    Comparison,
    Obs,
    band_average,
    best,
    compare,
    decide,
    holm,
    main_series,
    relative_upper_bound,
    seed_series,
    summarize,
)

BANDS = ("low", "medium", "high")
BAND_TITLES = {"low": "Low", "medium": "Medium", "high": "High", None: "Other"}
# The paper's column order (Revisiting PETuning, Table 2: FT, Adapter, PT, LoRA, BitFit), by registry name and
# by the labels recipes and imports give them; other columns follow alphabetically.
METHOD_ORDER = ("finetune", "adapter", "prefix", "lora", "bitfit")
METHOD_ALIASES = {"ft": "finetune", "full-ft": "finetune", "fine-tuning": "finetune", "pt": "prefix",
                  "prefix tuning": "prefix", "prefix-tuning": "prefix"}
# Headline metric per task of each paper's main table (REFERENCE.md section 10); a study names its own with
# ``petune report --headline TASK=METRIC`` or one of these presets.
HEADLINES: dict[str, dict[str, str]] = {
    "revisiting": {"cb": "f1_macro", "mrpc": "f1", "stsb": "pearson", "qqp": "accuracy", "cola": "mcc"},
    "modulewise": {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "stsb": "spearman"},
}
METRIC_TITLES = {"accuracy": "accuracy", "f1": "F1", "f1_macro": "macro-F1", "mcc": "Matthews corr.",
                 "pearson": "Pearson corr.", "spearman": "Spearman corr."}


def task_label(task: str) -> str:
    """The name papers print for ``task``: the benchmark's own spelling (``CB``, ``STS-B``, ``BoolQ``), read
    from the registry's data folder; ``glue_rte`` is ``RTE (GLUE)`` and ``mnli_mm`` ``MNLI-mm``."""
    from pl_petune.tasks import TASKS

    if task == "mnli_mm":
        return "MNLI-mm"
    spec = TASKS.get(task)
    if spec is None or "dir" not in spec.local:
        return task
    label = str(spec.local["dir"]).rstrip("/").split("/")[-1]
    return f"{label} (GLUE)" if task == "glue_rte" else label


def _registry() -> Mapping[str, Any]:
    from pl_petune.tasks import TASKS

    return TASKS


def _registry_size(task: str) -> float:
    from pl_petune.tasks import TASKS

    return float(TASKS[task].n_train) if task in TASKS else math.inf


def method_rank(label: str, method: str | None = None) -> int:
    """Position of a column in the paper's order (``len(METHOD_ORDER)`` for columns it does not have)."""
    for name in (method, label):
        if name is None:
            continue
        key = METHOD_ALIASES.get(name.lower(), name.lower())
        if key in METHOD_ORDER:
            return METHOD_ORDER.index(key)
    return len(METHOD_ORDER)
TEST_NAMES = {
    "welch": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False)",
    "student": "Student's t-test (scipy.stats.ttest_ind, equal_var=True)",
    "paired": "paired t-test on shared seeds (scipy.stats.ttest_rel)",
    "mannwhitney": "Mann-Whitney U test (scipy.stats.mannwhitneyu)",
    "wilcoxon": "Wilcoxon signed-rank test on shared seeds (scipy.stats.wilcoxon)",
}
ARROWS = {"md": {1: "↑", -1: "↓", 0: ""}, "tex": {1: r"$\uparrow$", -1: r"$\downarrow$", 0: ""}}
TRENDS = {"md": {1: "↗", -1: "↘", 0: "→", None: "n/a"},
          "tex": {1: r"$\nearrow$", -1: r"$\searrow$", 0: r"$\rightarrow$", None: "n/a"}}
LEAKY_NOTE = ("[leaky]: runs of a leaky protocol (`leaky`, `dev_split_leaky`) chose their checkpoint on the same set "
              "they report, so "
              "their scores are optimistic (Revisiting PETuning, Table 1); do not compare them with the others.")


@dataclass(frozen=True)
class Settings:
    """How a report tests and prints.

    Attributes:
        baseline: the method every other is tested against (full finetuning, ``finetune``).
        test: one of ``welch``, ``student``, ``paired``, ``mannwhitney``, ``wilcoxon``.
        alternative: ``one-sided`` (the paper: each one-tailed alternative at ``alpha``) or ``two-sided``.
        alpha: significance level. holm: Holm-adjust p-values within each table's family of comparisons.
        ddof: std's delta degrees of freedom (1: sample std). scale: printed score multiplier (100).
        digits: decimals printed.
        order: column names (as the records label them) in the order to print; columns not named follow.
            Default: the baseline, then the paper's order (FT, Adapter, PT, LoRA, BitFit), then the rest.
        rename: column name -> printed label. method_of: column name -> registry method (for the order).
        task_labels: ``paper`` (CB, STS-B, ...) or ``name`` (the registry names, cb, stsb, ...).
        headline: task -> metric the study reports (named in the notes).
    """

    baseline: str = "finetune"
    test: str = "welch"
    alternative: str = "one-sided"
    alpha: float = 0.05
    holm: bool = False
    ddof: int = 1
    scale: float = 100.0
    digits: int = 1
    order: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    method_of: Mapping[str, str] = field(default_factory=dict)
    task_labels: str = "paper"
    headline: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"unknown test {self.test!r}; known: {', '.join(TESTS)}")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"unknown alternative {self.alternative!r}; known: {', '.join(ALTERNATIVES)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha {self.alpha} must lie in (0, 1)")
        if self.task_labels not in ("paper", "name"):
            raise ValueError(f"task labels {self.task_labels!r} unknown; known: paper, name")
        if not 0 <= self.digits <= 6:
            raise ValueError(f"digits {self.digits} must lie in 0..6")

    @property
    def paired(self) -> bool:
        return self.test in ("paired", "wilcoxon")

    def describe(self) -> str:
        side = ("one-tailed: each alternative (better, worse) accepted at p < alpha" if self.alternative == "one-sided"
                else "two-sided")
        return (f"Test against `{self.rename.get(self.baseline, self.baseline)}`: {TEST_NAMES[self.test]}, {side}, "
                f"alpha = {self.alpha}"
                + (", Holm-corrected within the table" if self.holm else "") + ". ↑/↓: significantly better/worse.")


@dataclass
class Analysis:
    """Every number the tables print, computed once by :func:`analyze`."""

    settings: Settings
    tasks: list[str]
    band_of: dict[str, str | None]
    higher: dict[str, bool]
    metric: dict[str, str]
    columns: list[Column]
    cells: dict[tuple[str, Column], list[Obs]]
    baseline_of: dict[Column, Column | None]
    comparisons: dict[tuple[str, Column], Comparison] = field(default_factory=dict)
    verdicts: dict[tuple[str, Column], int] = field(default_factory=dict)
    bands: dict[tuple[str, Column], BandAverage] = field(default_factory=dict)
    band_comparisons: dict[tuple[str, Column], Comparison] = field(default_factory=dict)
    band_verdicts: dict[tuple[str, Column], int] = field(default_factory=dict)
    band_tasks: dict[str, list[str]] = field(default_factory=dict)
    series: dict[tuple[str, Column], dict[str, list[Obs]]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def show_protocol(self) -> bool:
        return len({c.protocol for c in self.columns}) > 1

    def label(self, column: Column) -> str:
        return column.label(self.show_protocol, self.settings.rename.get(column.method))

    def task_label(self, task: str) -> str:
        return task_label(task) if self.settings.task_labels == "paper" else task

    @property
    def any_leaky(self) -> bool:
        return any(c.leaky for c in self.columns)


def _scores(obs: Sequence[Obs]) -> dict:
    return {o.seed: o.score for o in obs}


def analyze(obs: Sequence[Obs], settings: Settings = Settings()) -> Analysis:
    """Group observations into cells and run every comparison and band average.

    Args:
        obs: from :func:`pl_petune.stats.core.observations`.
        settings: test, baseline and printing choices.

    Returns:
        The :class:`Analysis` the table builders read.

    Raises:
        ValueError: no observations.
    """
    if not obs:
        raise ValueError("no complete run records to report")
    dropped: dict[tuple[str, Column, str], list[str]] = {}
    kept = []
    for o in obs:
        why = ("a NaN score" if math.isnan(o.score) else
               "no usable seed" if any(not isinstance(x, int) or isinstance(x, bool) for x in o.seed) else "")
        if why:
            dropped.setdefault((o.task, o.column, why), []).append(o.run_key)
        else:
            kept.append(o)
    if not kept:
        raise ValueError("no run has a score and seeds to report: " + "; ".join(
            f"{t}: {len(k)} with {w}" for (t, _, w), k in dropped.items()))
    obs = kept
    raw: dict[tuple[str, Column], list[Obs]] = {}
    for o in obs:
        raw.setdefault((o.task, o.column), []).append(o)
    band_of = {o.task: o.band for o in obs}
    size: dict[str, float] = {}
    for o in obs:
        if o.train_size is not None:
            size[o.task] = max(size.get(o.task, 0), o.train_size)
    band_rank = {b: i for i, b in enumerate(BANDS)}
    # the official train size orders tasks (as it decides the band), not a run's subsample of it
    tasks = sorted(band_of, key=lambda t: (band_rank.get(band_of[t], len(BANDS)),  # type: ignore[arg-type]
                                           _registry_size(t) if t in _registry() else size.get(t, math.inf), t))
    order = {name: i for i, name in enumerate(settings.order)}
    columns = sorted({c for _, c in raw},
                     key=lambda c: (c.leaky, c.protocol, order.get(c.method, len(order)), c.method != settings.baseline,
                                    method_rank(c.method, settings.method_of.get(c.method)), c.method, c.variant))
    a = Analysis(settings, tasks, band_of, {o.task: o.higher_is_better for o in obs}, {o.task: o.metric for o in obs},
                 columns, {}, {})
    for (t, col, why), keys in dropped.items():
        a.dropped.append(f"{a.task_label(t)} / {a.label(col)}: {len(keys)} run(s) with {why} left out "
                         f"(run {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    for key, group in raw.items():
        a.series[key] = seed_series(group)
        a.cells[key] = main_series(group)
        counts = Counter(o.seed for o in a.cells[key])
        dup = [s for s, n in counts.items() if n > 1]
        if dup:
            a.duplicates.append(f"{key[0]} / {a.label(key[1])}: {len(dup)} seed pair(s) with several runs "
                                "(different hyper-parameters? split them with --group-by)")
    for col in columns:
        bases = [c for c in columns if c.method == settings.baseline and c.protocol == col.protocol]
        same = [c for c in bases if c.variant == col.variant]
        a.baseline_of[col] = None if col.method == settings.baseline else (
            same[0] if same else bases[0] if len(bases) == 1 else None)

    def scores(key: tuple[str, Column]) -> Any:
        s = _scores(a.cells[key])
        return s if settings.paired else list(s.values())

    for (task, col) in a.cells:
        base = a.baseline_of[col]
        if base is not None and (task, base) in a.cells:
            a.comparisons[(task, col)] = compare(scores((task, col)), scores((task, base)), a.higher[task],
                                                 settings.test)

    # band rows: plain mean of task means; the test compares per-seed band averages on shared tasks
    groups = {b: [t for t in tasks if band_of[t] == b] for b in (*BANDS, None)}
    a.band_tasks = {b: ts for b, ts in groups.items() if ts and b is not None}
    a.band_tasks["all"] = list(tasks)
    for b, ts in a.band_tasks.items():
        for col in columns:
            have = [t for t in ts if (t, col) in a.cells]
            if not have:
                continue
            a.bands[(b, col)] = band_average({t: _scores(a.cells[(t, col)]) for t in have}, settings.ddof)
            base = a.baseline_of[col]
            if base is None:
                continue
            shared = [t for t in have if (t, base) in a.cells]
            if not shared or len({a.higher[t] for t in shared}) > 1:
                continue
            mine = band_average({t: _scores(a.cells[(t, col)]) for t in shared}, settings.ddof)
            theirs = band_average({t: _scores(a.cells[(t, base)]) for t in shared}, settings.ddof)
            if mine.per_seed is None or theirs.per_seed is None:
                a.band_comparisons[(b, col)] = Comparison(mine.n, theirs.n, None, None, None, mine.mean - theirs.mean,
                                                          "no test: tasks share fewer than 2 seeds")
                continue
            m, t_ = mine.per_seed, theirs.per_seed
            a.band_comparisons[(b, col)] = compare(m if settings.paired else list(m.values()),
                                                   t_ if settings.paired else list(t_.values()),
                                                   a.higher[shared[0]], settings.test)
    for comps, verdicts in ((a.comparisons, a.verdicts), (a.band_comparisons, a.band_verdicts)):
        keys = list(comps)  # type: ignore[arg-type]
        adjusted = holm([comps[k].p(settings.alternative) for k in keys]) if settings.holm else [None] * len(keys)  # type: ignore[index]
        for k, p_adj in zip(keys, adjusted):
            verdicts[k] = decide(comps[k], settings.alpha, settings.alternative, p_adj)  # type: ignore[index]
    return a


# ---- grids and rendering --------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    """A printed score: mean (± std) with an optional verdict arrow and marks; already scaled."""

    mean: float
    std: float | None = None
    verdict: int = 0
    mark: str = ""
    digits: int = 1
    signed: bool = False

    def render(self, fmt: str) -> str:
        if math.isnan(self.mean):
            return "–"
        d = self.digits
        head = f"{self.mean:+.{d}f}" if self.signed else f"{self.mean:.{d}f}"
        if fmt == "tex":
            body = head + ("" if self.std is None or math.isnan(self.std) else f"$_{{\\pm {self.std:.{d}f}}}$")
        else:
            body = head + ("" if self.std is None or math.isnan(self.std) else f"±{self.std:.{d}f}")
        return body + ARROWS["tex" if fmt == "tex" else "md"][self.verdict] + self.mark


@dataclass(frozen=True)
class Trend:
    """A Table 3 verdict: +1 ↗, 0 →, -1 ↘, None n/a."""

    verdict: int | None

    def render(self, fmt: str) -> str:
        return TRENDS["tex" if fmt == "tex" else "md"][self.verdict]


@dataclass
class Grid:
    """A rendered table: a header, rows of cells (str, :class:`Value` or :class:`Trend`), section rows
    (a single label spanning the table), notes printed under it, and long-format CSV rows."""

    name: str
    title: str
    header: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    sections: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)

    def section(self, label: str) -> None:
        self.sections.add(len(self.rows))
        self.rows.append([label] + [""] * (len(self.header) - 1))


def _cell_text(cell: Any, fmt: str) -> str:
    return cell if isinstance(cell, str) else cell.render(fmt)


def to_markdown(grid: Grid) -> str:
    """GitHub Markdown: a title line, the table, then the notes as a list."""
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"**{grid.title}**", "", "| " + " | ".join(map(esc, grid.header)) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(grid.header) - 1)) + "|"]
    for i, row in enumerate(grid.rows):
        cells = [_cell_text(c, "md") for c in row]
        if i in grid.sections:
            cells[0] = f"*{cells[0]}*"
        lines.append("| " + " | ".join(map(esc, cells)) + " |")
    lines.append("")
    lines += [f"- {n}" for n in grid.notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↑": r"$\uparrow$",
        "↓": r"$\downarrow$", "†": r"$^\dagger$", "↗": r"$\nearrow$", "↘": r"$\searrow$", "→": r"$\rightarrow$",
        "–": "--", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$"}


def _tex_escape(s: str) -> str:
    """LaTeX for plain text: special characters escaped, Markdown code spans (`x`) as ``\texttt{x}``."""
    parts = s.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick is text
        parts = [s.replace("`", "'")]
    out = []
    for i, part in enumerate(parts):
        text = "".join(_TEX.get(ch, ch) for ch in part)
        out.append(rf"\texttt{{{text}}}" if i % 2 else text)
    return "".join(out)


def to_latex(grid: Grid) -> str:
    """A booktabs ``table`` with the notes in the caption."""
    n = len(grid.header)
    out = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (n - 1) + "}", r"\toprule",
           " & ".join(_tex_escape(h) for h in grid.header) + r" \\", r"\midrule"]
    for i, row in enumerate(grid.rows):
        if i in grid.sections:
            if i:
                out.append(r"\midrule")
            out.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex_escape(row[0])}}}}} \\")
            continue
        out.append(" & ".join(c.render("tex") if not isinstance(c, str) else _tex_escape(c) for c in row) + r" \\")
    caption = _tex_escape(grid.title + ". " + " ".join(grid.notes))
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:{grid.name}}}",
            r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(grid: Grid) -> str:
    """The grid's long-format rows (one per cell, full precision) as CSV."""
    if not grid.csv_rows:
        return ""
    keys: list[str] = []
    for r in grid.csv_rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(grid.csv_rows)
    return buf.getvalue()


# ---- the tables -----------------------------------------------------------------------------------
def _p_fields(c: Comparison | None) -> dict[str, Any]:
    if c is None:
        return {"p_better": "", "p_worse": "", "p_two_sided": "", "test_note": ""}
    return {"p_better": c.p_better, "p_worse": c.p_worse, "p_two_sided": c.p_two, "test_note": c.note}


def table2(a: Analysis) -> Grid:
    """Table 2 layout: task x method mean±std over seeds, arrows against the baseline, band averages.

    Band rows average the tasks each column has; a † marks a column averaged over fewer of the band's tasks
    than the band holds (a method missing on some tasks). Under the table: the test, n per cell, notes.
    """
    s = a.settings
    g = Grid("table2", "Table 2: mean ± std over seeds (scores x%g)" % s.scale,
             ["Task"] + [a.label(c) for c in a.columns])
    ncount = Grid("table2_n", "n", ["Task"] + [a.label(c) for c in a.columns])
    partial = False
    current: Any = object()
    for t in a.tasks:
        if a.band_of[t] != current:
            if current in a.band_tasks:
                partial |= _band_row(a, g, current)
            current = a.band_of[t]
            g.section(f"{BAND_TITLES.get(current, current)}-Resource" if current else "Other tasks")
        row: list[Any] = [a.task_label(t)]
        nrow: list[Any] = [a.task_label(t)]
        for c in a.columns:
            cell = a.cells.get((t, c))
            if not cell:
                row.append("–")
                nrow.append("0")
                continue
            sm = summarize([o.score for o in cell], s.ddof)
            v = a.verdicts.get((t, c), 0)
            row.append(Value(sm.mean * s.scale, sm.std * s.scale, v, digits=s.digits))
            nrow.append(str(sm.n))
            comp = a.comparisons.get((t, c))
            g.csv_rows.append({"row": a.task_label(t), "task": t, "kind": "task", "band": a.band_of[t] or "",
                               "metric": a.metric[t], "column": a.label(c),
                               "higher_is_better": a.higher[t], "method": c.method, "protocol": c.protocol,
                               "variant": c.variant, "leaky": c.leaky, "n": sm.n, "mean": sm.mean * s.scale,
                               "std": sm.std * s.scale, "verdict": v, **_p_fields(comp)})
        g.rows.append(row)
        ncount.rows.append(nrow)
    if current in a.band_tasks:
        partial |= _band_row(a, g, current)
    if len(a.band_tasks) > 2 or None in a.band_of.values():
        partial |= _band_row(a, g, "all")
    counts = Counter(int(n) for r in ncount.rows for n in r[1:] if n != "0")
    common = counts.most_common(1)[0][0]
    odd = [f"{r[0]} / {a.label(c)} = {n}" for r in ncount.rows for c, n in zip(a.columns, r[1:])
           if n not in ("0", str(common))]
    g.notes.append(s.describe())
    g.notes.append("Scores: " + ", ".join(f"{a.task_label(t)} {METRIC_TITLES.get(a.metric[t], a.metric[t])}"
                                          for t in a.tasks)
                   + (" (headline metrics named by the study: " + ", ".join(f"{k}={v}" for k, v in s.headline.items())
                      + ")" if s.headline else "") + f"; x{s.scale:g}.")
    g.notes.append(f"n per cell: {common} runs (seeds)" + ("; except " + ", ".join(odd) if odd else " in every cell")
                   + ". Band rows: n = seeds shared by the band's tasks.")
    spreads: dict[str, list[str]] = {}
    for (b, c), avg in a.bands.items():
        if b != "all":
            spreads.setdefault(avg.spread, []).append(f"{BAND_TITLES.get(b, b)} / {a.label(c)}")
    how = {"per-seed": "std over seeds of the per-seed band average (seeds shared by all the band's tasks)",
           "independent": "sqrt(sum of the task variances) / k (fewer than 2 seeds shared: tasks taken as "
                          "independent)"}
    g.notes.append(f"Std: {'sample (ddof=1)' if s.ddof == 1 else f'ddof={s.ddof}'}. Band rows: plain mean of the "
                   "task means ± " + ("; ".join(
                       f"{how[k]}" + (f" for {', '.join(v)}" if len(spreads) > 1 else "") for k, v in spreads.items())
                       or "no spread") + ". Avg. (All): plain mean of every task mean, no spread or test (as the "
                   "paper prints it; the CSV has its spread).")
    if partial:
        g.notes.append("†: averaged over fewer of the band's tasks (method missing on some); its test uses "
                       "only the tasks it shares with the baseline.")
    if a.any_leaky:
        g.notes.append(LEAKY_NOTE)
    untested = sorted({c.note for c in a.comparisons.values() if c.note.startswith("no test")})
    if untested:
        g.notes.append("Untested cells: " + "; ".join(untested) + ".")
    g.notes += a.duplicates
    g.notes += a.dropped
    return g


def _band_row(a: Analysis, g: Grid, band: str) -> bool:
    s = a.settings
    label = "Avg. (All)" if band == "all" else f"Avg. ({BAND_TITLES.get(band, band)})"
    row: list[Any] = [label]
    partial = False
    for c in a.columns:
        avg = a.bands.get((band, c))
        if avg is None:
            row.append("–")
            continue
        mark = "†" if len(avg.tasks) < len(a.band_tasks[band]) else ""
        partial |= bool(mark)
        v = a.band_verdicts.get((band, c), 0)
        if band == "all":
            row.append(Value(avg.mean * s.scale, None, 0, mark, s.digits))
        else:
            row.append(Value(avg.mean * s.scale, avg.std * s.scale, v, mark, s.digits))
        g.csv_rows.append({"row": label, "kind": "band", "band": band, "column": a.label(c), "method": c.method,
                           "protocol": c.protocol,
                           "variant": c.variant, "leaky": c.leaky, "n": avg.n, "mean": avg.mean * s.scale,
                           "std": avg.std * s.scale, "verdict": v, "tasks": " ".join(avg.tasks),
                           "spread": avg.spread, **_p_fields(a.band_comparisons.get((band, c)))})
    g.rows.append(row)
    return partial


def table3(a: Analysis) -> Grid:
    """Table 3 layout: per method and band, ↗ (significantly better than the baseline), → (no significant
    difference) or ↘ (worse), from the band rows of Table 2."""
    bands = [b for b in BANDS if b in a.band_tasks]
    g = Grid("table3", "Table 3: band-level comparison with "
             f"{a.settings.rename.get(a.settings.baseline, a.settings.baseline)}",
             ["Method"] + [BAND_TITLES[b] for b in bands])
    for c in a.columns:
        if a.baseline_of.get(c) is None:
            continue
        row: list[Any] = [a.label(c)]
        for b in bands:
            comp = a.band_comparisons.get((b, c))
            v = None if comp is None or not comp.tested else a.band_verdicts[(b, c)]
            row.append(Trend(v))
            g.csv_rows.append({"method": c.method, "protocol": c.protocol, "variant": c.variant, "leaky": c.leaky,
                               "band": b, "trend": {1: "better", 0: "no difference", -1: "worse", None: "n/a"}[v],
                               **_p_fields(comp)})
        g.rows.append(row)
    g.notes.append(a.settings.describe().replace("↑/↓: significantly better/worse.",
                                                 "↗/→/↘: better / no significant difference / worse."))
    g.notes.append("Each band compares per-seed band averages over the tasks both methods have (n = seeds those "
                   "tasks share, as in Table 2's band rows; the CSV has each p-value); n/a: no test.")
    if any(c.leaky and a.baseline_of.get(c) is not None for c in a.columns):
        g.notes.append(LEAKY_NOTE)
    return g


def table4(a: Analysis) -> Grid | None:
    """Table 4 layout: mean±std over weight-init (WI), data-order (DO) and global seeds, per task and
    method; None when no cell holds a weight-init or data-order series."""
    keys = [k for k, ser in a.series.items() if "weight-init" in ser or "data-order" in ser]
    if not keys:
        return None
    s = a.settings
    g = Grid("table4", "Table 4: seeds controlling weight init (WI), data order (DO), or both (Global)",
             ["Task / method", "WI", "DO", "Global"])
    for t in a.tasks:
        for c in a.columns:
            if (t, c) not in keys:
                continue
            row: list[Any] = [f"{a.task_label(t)} / {a.label(c)}"]
            for regime in REGIMES:
                ser = a.series[(t, c)].get(regime)
                if not ser:
                    row.append("–")
                    continue
                sm = summarize([o.score for o in ser], s.ddof)
                row.append(Value(sm.mean * s.scale, sm.std * s.scale, digits=s.digits, mark=f" (n={sm.n})"))
                g.csv_rows.append({"task": t, "method": c.method, "protocol": c.protocol, "variant": c.variant,
                                   "leaky": c.leaky, "regime": regime, "n": sm.n, "mean": sm.mean * s.scale,
                                   "std": sm.std * s.scale})
            g.rows.append(row)
    g.notes.append("WI: init seed varies, data seed fixed; DO: data seed varies, init seed fixed; Global: one "
                   "seed drives both (seed_mode tied, or init = data). A run can belong to several series.")
    if any(c.leaky for _, c in keys):
        g.notes.append(LEAKY_NOTE)
    return g


def upper_bound(a: Analysis) -> Grid:
    """Figure 3 as a table: best-of-seeds of each method relative to the baseline's, in percent
    (positive = better for the metric)."""
    cols = [c for c in a.columns if a.baseline_of.get(c) is not None]
    g = Grid("upper_bound", "Upper bounds: best of seeds relative to "
             f"{a.settings.rename.get(a.settings.baseline, a.settings.baseline)} (%)",
             ["Task"] + [a.label(c) for c in cols])
    for t in a.tasks:
        row: list[Any] = [a.task_label(t)]
        for c in cols:
            base = a.baseline_of[c]
            mine, theirs = a.cells.get((t, c)), a.cells.get((t, base))  # type: ignore[arg-type]
            if not mine or not theirs:
                row.append("–")
                continue
            sc, bc = [o.score for o in mine], [o.score for o in theirs]
            rel = relative_upper_bound(sc, bc, a.higher[t])
            row.append(Value(rel, digits=a.settings.digits, signed=True))
            g.csv_rows.append({"task": t, "method": c.method, "protocol": c.protocol, "variant": c.variant,
                               "leaky": c.leaky, "n": len(sc), "n_base": len(bc),
                               "best": best(sc, a.higher[t]) * a.settings.scale,
                               "best_base": best(bc, a.higher[t]) * a.settings.scale, "relative_pct": rel})
        g.rows.append(row)
    g.notes.append("100 x (best(method) - best(baseline)) / |best(baseline)|, sign flipped for lower-is-better "
                   "metrics; best = max over seeds (min when lower is better).")
    ns = Counter(len(obs) for obs in a.cells.values())
    g.notes.append("n per cell (runs the best is taken over): " + ", ".join(
        f"{n} in {k} cell{'s' if k > 1 else ''}" for n, k in sorted(ns.items())) + ".")
    if any(c.leaky for c in cols):
        g.notes.append(LEAKY_NOTE)
    return g
