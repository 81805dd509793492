"""The callbacks install alone: a distribution of their own (``callbacks/pyproject.toml``) with lightning and torch
as its only dependencies, imported as ``from pl_petune.callbacks import ...``.

The fast tests read the source and the metadata; the slow one builds the wheel, installs it into a fresh
virtual environment that holds lightning and torch only, checks nothing else was installed, and fits a tiny
outside module with each callback there.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
CALLBACKS = ROOT / "callbacks"
# what lightning and torch bring with them and the callbacks may import
ALLOWED = {"torch", "lightning", "typing_extensions", "numpy"}
LAZY_OPTIONAL = {"sklearn"}  # only inside the L-BFGS probe, behind require_sklearn()


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level) for each import in a file."""
    tree = ast.parse(path.read_text())
    out = []
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.module or "", id(node) in top))
    return out


def test_callbacks_import_only_lightning_torch_and_the_standard_library():
    for path in sorted(CALLBACKS.glob("*.py")):
        for name, module_level in _imports(path):
            root = name.split(".")[0]
            if root == "pl_petune":
                assert name.startswith("pl_petune.callbacks"), f"{path.name} imports pl_petune internals: {name}"
            elif root in LAZY_OPTIONAL:
                assert not module_level and path.name == "probe.py", f"{path.name}: {name} at module level"
            else:
                assert root in ALLOWED or root in sys.stdlib_module_names or root == "__future__", \
                    f"{path.name} imports {name}"


def test_distribution_depends_on_lightning_and_torch_only():
    meta = tomllib.loads((CALLBACKS / "pyproject.toml").read_text())["project"]
    assert sorted(re.split(r"[<>=!~ ;]", d)[0] for d in meta["dependencies"]) == ["lightning", "torch"]
    assert set(meta["optional-dependencies"]) == {"lbfgs"}


def _build(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(CALLBACKS, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pl_petune_callbacks-*.whl")
    return wheel


def test_wheel_holds_the_callbacks_package_only(tmp_path):
    wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    code = sorted(n for n in names if not n.startswith("pl_petune_callbacks-"))
    assert code == sorted(f"pl_petune/callbacks/{p.name}" for p in CALLBACKS.glob("*.py"))
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert sorted(re.split(r"[<>=!~ ;]", r)[0] for r in requires if "extra ==" not in r) == ["lightning", "torch"]


SCRIPT = textwrap.dedent('''
    import lightning as L, torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from pl_petune.callbacks import (CallbackMisuse, ChildTuningD, DevSplitEarlyStopping, Freezing, HeadWarmStart,
                                     Mixout, SaveHeadFeatures)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        def forward(self, x):
            h = torch.tanh(self.embed(x))
            for layer in self.layers:
                h = h + torch.tanh(layer(h))
            return h

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.fc = nn.Linear(8, 2)
        def forward(self, x):
            return self.fc(self.encoder(x))
        def training_step(self, b, i):
            return nn.functional.cross_entropy(self(b[0]), b[1])
        def validation_step(self, b, i):
            self.log("val_loss", nn.functional.cross_entropy(self(b[0]), b[1]))
        def test_step(self, b, i):
            self.log("test_loss", nn.functional.cross_entropy(self(b[0]), b[1]))
        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    torch.manual_seed(0)
    x = torch.randn(40, 4); y = (x[:, 0] > 0).long()
    train = DataLoader(TensorDataset(x[:30], y[:30]), batch_size=10)
    dev = DataLoader(TensorDataset(x[30:], y[30:]), batch_size=10)
    kw = dict(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, num_sanity_val_steps=0)
    cases = {
        "Freezing": lambda: Freezing(backbone_attr="encoder", unfreeze=[{"epoch": 1, "lr": 1e-3}]),
        "HeadWarmStart": lambda: HeadWarmStart(backbone_attr="encoder", head_attr="fc", stage1_epochs=1),
        "DevSplitEarlyStopping": lambda: DevSplitEarlyStopping("val_loss", dev_fraction=0.2),
        "Mixout": lambda: Mixout(p=0.5),
        "ChildTuningD": lambda: ChildTuningD(backbone_attr="encoder", reserve_p=0.5),
        "SaveHeadFeatures": lambda: SaveHeadFeatures(head_attr="fc"),
    }
    for name, make in cases.items():
        trainer = L.Trainer(default_root_dir=name, callbacks=[make()], **kw)
        model = Net()
        before = [p.detach().clone() for p in model.parameters()]
        trainer.fit(model, train, None if name == "DevSplitEarlyStopping" else dev)
        if name == "SaveHeadFeatures":
            trainer.test(model, dev)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), name
        print("fitted", name)
    try:
        HeadWarmStart(solver="lbfgs")
    except CallbackMisuse as err:
        assert "scikit-learn is not installed" in str(err), err
        print("refused lbfgs without scikit-learn")
''')


@pytest.mark.slow
def test_install_alone_into_a_fresh_venv_and_fit_each_callback(tmp_path):
    wheel = _build(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    # torch==2.13.0 is the CPU wheel on disk; lightning comes from the package index
    out = subprocess.run([*pip, "install", "-q", "torch==2.13.0", "lightning"], capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-2000:]
    freeze = lambda: set(subprocess.run([*pip, "freeze"], capture_output=True, text=True).stdout.splitlines())  # noqa: E731
    before = freeze()
    out = subprocess.run([*pip, "install", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    added = freeze() - before
    assert [a.split("@")[0].split("==")[0].strip() for a in added] == ["pl-petune-callbacks"], added
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "fit_each.py").write_text(SCRIPT)
    out = subprocess.run([str(venv / "bin" / "python"), "fit_each.py"], cwd=tmp_path / "run", capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("Freezing", "HeadWarmStart", "DevSplitEarlyStopping", "Mixout", "ChildTuningD", "SaveHeadFeatures"):
        assert f"fitted {name}" in out.stdout
    assert "refused lbfgs without scikit-learn" in out.stdout
    assert (tmp_path / "run" / "SaveHeadFeatures" / "features.npz").is_file()
