"""The wheel holds pl_petune with callbacks, recipes and sweeps inside, so `from pl_petune.callbacks import
...` works from an install and no top-level `callbacks` module is shipped."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_layout(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("pl_petune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pl_petune/callbacks/selection.py" in names
    assert "pl_petune/recipes/quickstart.yaml" in names
    assert not any(n.startswith("callbacks/") for n in names), "no top-level `callbacks` package"
    assert any(n.endswith("entry_points.txt") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "petune = pl_petune.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_callbacks_depend_on_lightning_and_torch_only():
    """DESIGN invariant: other projects can use pl_petune.callbacks without the rest of pl_petune."""
    code = ("import sys, pl_petune.callbacks; "
            "print(sorted(m for m in sys.modules if m.startswith('pl_petune') and m != 'pl_petune' "
            "and not m.startswith('pl_petune.callbacks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
