"""Rendering a :class:`Grid` (a table's cells, notes and long-format rows) to Markdown, LaTeX and CSV.

Scores are printed scaled (x100) with the study's decimals, e.g. ``70.3±2.1``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

ARROWS = {"md": {1: "↑", -1: "↓", 0: ""}, "tex": {1: r"$\uparrow$", -1: r"$\downarrow$", 0: ""}}
TRENDS = {"md": {1: "↗", -1: "↘", 0: "→", None: "n/a"},
          "tex": {1: r"$\nearrow$", -1: r"$\searrow$", 0: r"$\rightarrow$", None: "n/a"}}


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

