"""`petune report` end to end on a store filled with synthetic records."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from stats_records import make_record, study
from pl_petune.cli import main as cli_main
from pl_petune.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "results.sqlite"
    st = Store(path)
    recs = study(tasks=("cb", "copa", "wsc", "rte", "sst2"), seeds=range(1, 6))
    for s in range(2, 6):  # a Table 4 study on COPA
        recs += [make_record("copa", m, 0.6 + 0.01 * s * (i + 1), s, 1) for i, m in enumerate(("finetune", "lora"))]
        recs += [make_record("copa", m, 0.6 - 0.01 * s * (i + 1), 1, s) for i, m in enumerate(("finetune", "lora"))]
    recs += [make_record("rte", "lora", 0.7 + 0.01 * s, s, protocol="leaky") for s in range(1, 4)]
    for r in recs:
        st.put(r)
    return path


def test_report_end_to_end(store, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli_main(["report", "--store", str(store), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "| CB |" in printed and "[leaky]" in printed
    for name in ("table2", "table3", "table4", "upper_bound"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{name}.{ext}").stat().st_size > 100, f"{name}.{ext}"
    for png in ("fig_stability", "fig_density", "fig_spread", "upper_bound"):
        path = out / f"{png}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert np.std(img[..., :3]) > 0.05, f"{png} looks blank"
    assert "Welch" in (out / "table2.md").read_text()


def test_report_formats_and_options(store, tmp_path):
    out = tmp_path / "md_only"
    assert cli_main(["report", "--store", str(store), "--out", str(out), "--format", "md", "--test", "paired",
                     "--alternative", "two-sided", "--alpha", "0.1", "--holm", "--protocol", "train_split"]) == 0
    assert sorted(p.suffix for p in out.iterdir()) == [".md"] * 4
    text = (out / "table2.md").read_text()
    assert "paired t-test" in text and "two-sided" in text and "alpha = 0.1" in text and "Holm" in text
    assert "[leaky]" not in text


@pytest.mark.parametrize("args,needle", [
    (["--test", "ztest"], "unknown test 'ztest'; choose from: welch"),
    (["--format", "md,jpg"], "unknown format 'jpg'"),
    (["--alpha", "2"], "alpha '2'"),
    (["--baseline", "fintune"], "baseline 'fintune' has no runs; methods in the store:"),
    (["--protocol", "nope"], "no runs with protocol 'nope'"),
])
def test_bad_input_exits_2_with_one_line(store, tmp_path, capsys, args, needle):
    assert cli_main(["report", "--store", str(store), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_missing_store_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["report", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()


def test_stats_import_neither_torch_nor_lightning():
    code = ("import sys, pl_petune.stats.tables, pl_petune.report; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
