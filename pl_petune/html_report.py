"""``petune report --format html``: one self-contained static page per study (``study.html``).

The page holds the report's tables, its figures inlined as SVG, and every run's per-seed score with filters
by task, method (column), protocol and seed, in plain JavaScript with no network access (no CDN, no fonts,
no images to fetch): it opens from a file, a mail attachment or a static web server alike. The filter state
lives in the URL hash (``#view=points&task=CB&method=LoRA``; ``view=points`` shows only the per-seed part), so a
filtered view can be linked. Each run links to its
record: the record itself is embedded (``#run=<run_key>`` shows it) and, where the run's folder is known, to
``record.json`` in it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pl_petune.stats.tables import Analysis, Grid

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{padding:.2em .6em;border-bottom:1px solid #e4e4e4;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.section td{font-style:italic;font-weight:600;background:#f6f6f6;text-align:left}
ul.notes{font-size:.85em;color:#444}
figure{margin:1em 0}figure svg,figure img{max-width:100%;height:auto}
#filters label{margin-right:1em}#filters select{margin-left:.3em}
#points td.score{font-variant-numeric:tabular-nums}
#record-view{background:#f6f6f6;padding:1em;max-height:30em;overflow:auto;font-size:.8em}
.muted{color:#777}
body.focus-points .report-part{display:none}
"""

_JS = r"""
(function(){
  const FIELDS = ["task", "method", "protocol", "seed"];
  const rows = Array.from(document.querySelectorAll("#points tbody tr"));
  const records = JSON.parse(document.getElementById("records").textContent);
  const sel = {};
  FIELDS.forEach(f => { sel[f] = document.getElementById("f-" + f); });
  function state(){
    const out = {};
    FIELDS.forEach(f => { if (sel[f].value) out[f] = sel[f].value; });
    return out;
  }
  function fromHash(){
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    FIELDS.forEach(f => {
      const v = params.get(f);
      sel[f].value = (v !== null && Array.from(sel[f].options).some(o => o.value === v)) ? v : "";
    });
    const run = params.get("run");
    const view = document.getElementById("record-view");
    if (run && records[run]) {
      view.textContent = JSON.stringify(records[run], null, 1);
      view.hidden = false;
      document.getElementById("record-key").textContent = run;
    } else { view.hidden = true; document.getElementById("record-key").textContent = "none"; }
    document.body.classList.toggle("focus-points", params.get("view") === "points");
    if (run) document.getElementById("record-section").scrollIntoView();
  }
  function apply(){
    const st = state();
    let shown = 0;
    const pts = [];
    rows.forEach(r => {
      const ok = FIELDS.every(f => !st[f] || r.dataset[f] === st[f]);
      r.hidden = !ok;
      if (ok) { shown += 1; pts.push(r); }
    });
    document.getElementById("shown-count").textContent = String(shown);
    draw(pts);
  }
  function draw(pts){
    const svg = document.getElementById("points-plot");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const groups = [];
    const index = {};
    pts.forEach(r => {
      const k = r.dataset.task + " / " + r.dataset.method;
      if (!(k in index)) { index[k] = groups.length; groups.push({label: k, color: r.dataset.color, ys: []}); }
      groups[index[k]].ys.push(parseFloat(r.dataset.score));
    });
    const ns = "http://www.w3.org/2000/svg";
    const W = 900, rowH = 16, left = 230, H = Math.max(40, groups.length * rowH + 30);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("height", H);
    const all = groups.flatMap(g => g.ys);
    if (!all.length) return;
    let lo = Math.min(...all), hi = Math.max(...all);
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const x = v => left + (v - lo) / (hi - lo) * (W - left - 20);
    groups.forEach((g, i) => {
      const y = 15 + i * rowH;
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", left - 8); t.setAttribute("y", y + 4); t.setAttribute("text-anchor", "end");
      t.setAttribute("font-size", "11"); t.textContent = g.label; svg.appendChild(t);
      g.ys.forEach(v => {
        const c = document.createElementNS(ns, "circle");
        c.setAttribute("cx", x(v)); c.setAttribute("cy", y); c.setAttribute("r", 4);
        c.setAttribute("fill", g.color); c.setAttribute("fill-opacity", "0.7"); svg.appendChild(c);
      });
    });
    [lo, hi].forEach((v, j) => {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", x(v)); t.setAttribute("y", H - 4); t.setAttribute("font-size", "10");
      t.setAttribute("text-anchor", j ? "end" : "start"); t.textContent = v.toFixed(1); svg.appendChild(t);
    });
  }
  FIELDS.forEach(f => sel[f].addEventListener("change", () => {
    const st = state();
    const params = new URLSearchParams(Object.assign({view: "points"}, st));
    history.replaceState(null, "", "#" + params.toString());
    apply();
  }));
  window.addEventListener("hashchange", () => { fromHash(); apply(); });
  fromHash();
  apply();
  document.body.dataset.ready = "1";
})();
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def grid_html(grid: Grid) -> str:
    """A :class:`Grid` as an HTML table with its title and notes."""
    out = [f'<table id="table-{_esc(grid.name)}"><caption>{_esc(grid.title)}</caption><thead><tr>']
    out += [f"<th>{_esc(h)}</th>" for h in grid.header]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(grid.rows):
        if i in grid.sections:
            out.append(f'<tr class="section"><td colspan="{len(grid.header)}">{_esc(row[0])}</td></tr>')
            continue
        out.append("<tr>" + "".join(f"<td>{_esc(c if isinstance(c, str) else c.render('md'))}</td>" for c in row)
                   + "</tr>")
    out.append("</tbody></table>")
    if grid.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in grid.notes) + "</ul>")
    return "".join(out)


def _hex(color: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in color[:3])


def _record_link(rec: Mapping[str, Any], out: Path) -> str:
    run_dir = rec.get("run_dir")
    if not run_dir:
        return ""
    target = Path(run_dir) / "record.json"
    try:
        href = os.path.relpath(target, out.resolve())
    except ValueError:  # another drive on Windows
        href = target.as_uri()
    return f' <a class="muted" href="{_esc(Path(href).as_posix())}">record.json</a>'


def study_page(a: Analysis, grids: Sequence[Grid], records: Sequence[Mapping[str, Any]],
               figures: Mapping[str, tuple[str, bytes] | None], out: str | os.PathLike,
               title: str | None = None) -> str:
    """The study page's HTML.

    Args:
        a: the analysis the tables came from.
        grids: the tables, in page order.
        records: the complete records reported (embedded; each point links to its own).
        figures: file stem -> ``(format, bytes)`` of the rendered figure (``svg`` is inlined, ``png`` embedded
            as base64), or None for a figure not drawn.
        out: the folder the page is written to (run folders are linked relative to it).
        title: the page title (default: the folder's name).
    """
    from pl_petune import figures as figs

    out = Path(out)
    title = title or f"Study: {out.resolve().name}"
    colors = figs.palette(a)
    s = a.settings
    by_key = {str(r.get("run_key")): r for r in records}
    points = [(t, c, o) for (t, c), obs in a.cells.items() for o in obs]
    points.sort(key=lambda p: (a.tasks.index(p[0]), a.columns.index(p[1]), repr(p[2].seed)))

    def options(field: str, values: list[str]) -> str:
        opts = "".join(f'<option value="{_esc(v)}">{_esc(v)}</option>' for v in values)
        return (f'<label>{field} <select id="f-{field}"><option value="">all</option>{opts}</select></label>')

    def method(c: Any) -> str:  # the protocol has a filter of its own
        return s.rename.get(c.method, c.method) + (f" ({c.variant})" if c.variant else "")

    tasks = list(dict.fromkeys(a.task_label(t) for t, _, _ in points))
    methods = list(dict.fromkeys(method(c) for _, c, _ in points))
    protocols = sorted({c.protocol for _, c, _ in points})
    seeds = sorted({_seed_text(o) for _, _, o in points}, key=lambda v: (len(v), v))
    body = [f"<h1>{_esc(title)}</h1>",
            f'<p class="muted">{len(records)} runs, {len(a.tasks)} tasks, {len(a.columns)} columns. '
            f"{_esc(s.describe())}</p>",
            '<p class="muted"><a href="#view=points">only the per-seed scores</a> · <a href="#">everything</a></p>',
            '<div class="report-part"><h2>Tables</h2>']
    body += [grid_html(g) for g in grids]
    body.append("<h2>Figures</h2>")
    for name, fig in figures.items():
        if fig is None:
            why = _esc(figs.WHY_EMPTY.get(name, "nothing to draw"))
            body.append(f'<p class="muted">{_esc(name)}: not drawn ({why})</p>')
            continue
        fmt, data = fig
        if fmt == "svg":
            text = data.decode("utf-8")
            inner = text[text.index("<svg"):]
        else:
            inner = f'<img alt="{_esc(name)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        body.append(f'<figure id="fig-{_esc(name)}">{inner}<figcaption>{_esc(name)}</figcaption></figure>')
    body.append("</div>")
    body.append('<h2 id="per-seed">Per-seed scores</h2>')
    body.append('<div id="filters">' + options("task", tasks) + options("method", methods)
                + options("protocol", protocols) + options("seed", seeds)
                + ' <span class="muted"><span id="shown-count"></span> of ' + str(len(points))
                + " runs shown</span></div>")
    body.append('<svg id="points-plot" xmlns="http://www.w3.org/2000/svg" width="100%" height="40"></svg>')
    body.append('<table id="points"><thead><tr><th>task</th><th>method</th><th>protocol</th><th>init seed</th>'
                f"<th>data seed</th><th>{_esc(f'score x{s.scale:g}')}</th><th>run</th></tr></thead><tbody>")
    for t, c, o in points:
        score = o.score * s.scale
        rec = by_key.get(o.run_key, {})
        body.append(
            f'<tr data-task="{_esc(a.task_label(t))}" data-method="{_esc(method(c))}"'
            f' data-protocol="{_esc(c.protocol)}"'
            f' data-seed="{_esc(_seed_text(o))}" data-score="{score:.6g}" data-color="{_hex(colors[c.method])}">'
            f"<td>{_esc(a.task_label(t))}</td><td>{_esc(a.label(c))}</td><td>{_esc(c.protocol)}</td>"
            f"<td>{_esc(o.init_seed)}</td><td>{_esc(o.data_seed)}</td>"
            f'<td class="score">{score:.{s.digits + 2}f}</td>'
            f'<td><a href="#run={_esc(o.run_key)}">{_esc(o.run_key)}</a>{_record_link(rec, out)}</td></tr>')
    body.append("</tbody></table>")
    body.append('<h2 id="record-section">Run record: <code id="record-key">none</code></h2>'
                '<pre id="record-view" hidden></pre>')
    blob = json.dumps(_clean(by_key), sort_keys=True, default=str, allow_nan=False).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(body)
            + f'<script type="application/json" id="records">{blob}</script><script>{_JS}</script></body></html>\n')


def _clean(x: Any) -> Any:
    """JSON-safe for a browser: NaN and infinities (not JSON) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _seed_text(o: Any) -> str:
    return str(o.init_seed) if o.init_seed == o.data_seed else f"{o.init_seed}/{o.data_seed}"
