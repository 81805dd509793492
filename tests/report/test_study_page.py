"""The study page (`petune report --format html`) in a real headless Chromium, offline: the tables render, the
filters change what is shown, each run links to its record, and a screenshot differs between filter states."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from stats_records import make_record
from pl_petune.cli import main as cli_main
from pl_petune.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars"]

if CHROMIUM is None:
    print("tests/report/test_study_page.py: skipped, no chromium (apt-get install -y chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("page")
    recs = []
    for s in range(1, 5):
        for m, name, d in (("finetune", "FT", 0.0), ("lora", "LoRA", 0.03)):
            recs.append(make_record("cb", m, 0.6 + d + s / 100, s, name=name, run_dir=str(root / "runs" / f"{m}{s}")))
            recs.append(make_record("rte", m, 0.7 - d + s / 200, s, name=name))
    recs.append(make_record("rte", "lora", 0.65, 1, protocol="leaky", name="LoRA"))
    Store(root / "s.sqlite").put_many(recs)
    out = root / "rep"
    assert cli_main(["report", "--store", str(root / "s.sqlite"), "--out", str(out), "--format", "html"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["study.html"]
    return out / "study.html"


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                          timeout=120, text=not any(a.startswith("--screenshot") for a in args))


def _dom(tmp_path: Path, page: Path, fragment: str = "") -> str:
    proc = _chromium(tmp_path, page.as_uri() + fragment, "--dump-dom")
    assert proc.returncode == 0 and 'data-ready="1"' in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def _visible_points(dom: str) -> list[str]:
    body = dom[dom.index('<table id="points">'):]
    body = body[:body.index("</table>")]
    return [m.group(0) for m in re.finditer(r"<tr data-task=[^>]*>", body) if " hidden" not in m.group(0)]


def test_page_is_self_contained(page):
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']https?:""", text) and "<link" not in text and "@import" not in text
    assert text.count("<svg") >= 4  # the figures, inlined


def test_tables_render_and_filters_change_what_is_shown(tmp_path, page):
    dom = _dom(tmp_path, page)
    assert '<table id="table-table2">' in dom and "<td>CB</td>" in dom and "Low-Resource" in dom
    assert len(_visible_points(dom)) == 17
    dom = _dom(tmp_path, page, "#view=points&task=CB&method=LoRA")
    shown = _visible_points(dom)
    assert len(shown) == 4 and all('data-task="CB" data-method="LoRA"' in r for r in shown)
    assert re.search(r'id="shown-count">4<', dom)
    dom = _dom(tmp_path, page, "#protocol=leaky")
    assert len(_visible_points(dom)) == 1
    dom = _dom(tmp_path, page, "#seed=3&task=RTE")
    assert len(_visible_points(dom)) == 2
    assert dom.count("<circle") == 2, "the per-seed plot follows the filters"


def test_each_run_links_to_its_record(tmp_path, page):
    text = page.read_text()
    key = re.search(r'<a href="#run=([0-9a-f]+)">', text).group(1)
    dom = _dom(tmp_path, page, f"#run={key}")
    view = re.search(r'<pre id="record-view"( hidden="")?>(.*?)</pre>', dom, re.S)
    assert view.group(1) is None and f'"run_key": "{key}"' in view.group(2)
    assert 'href="../runs/finetune1/record.json"' in text


def test_screenshot_differs_between_filter_states(tmp_path, page):
    shots = []
    for fragment in ("#view=points", "#view=points&task=RTE&method=FT"):
        png = tmp_path / f"shot{len(shots)}.png"
        proc = _chromium(tmp_path, page.as_uri() + fragment, f"--screenshot={png}", "--window-size=1000,900")
        assert proc.returncode == 0 and png.stat().st_size > 1000, proc.stderr[-2000:]
        img = mpimg.imread(png)[..., :3]
        assert img.shape[:2] == (900, 1000) and np.std(img) > 0.02, "a blank screenshot"
        shots.append(img)
    assert np.abs(shots[0] - shots[1]).mean() > 0.001, "the filter changed nothing on screen"
