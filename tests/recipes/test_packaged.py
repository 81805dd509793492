"""Packaged recipes: `petune recipes list|show|cp`, and `--config NAME` for users with no checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pl_petune.cli import main
from pl_petune.errors import ConfigError
from pl_petune.packaged import packaged_names, resolve_config, resolve_config_args, resolve_recipe_path

ROOT = Path(__file__).resolve().parents[2]


def test_list_names_every_yaml_recipe(capsys):
    assert main(["recipes", "list"]) == 0
    names = capsys.readouterr().out.split()
    on_disk = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix()
                     for p in (ROOT / "recipes").rglob("*.yaml"))
    assert names == on_disk and "quickstart" in names and "methods/lora" in names


def test_list_prefix_and_unknown_prefix(capsys):
    assert main(["recipes", "list", "methods/"]) == 0
    assert all(n.startswith("methods/") for n in capsys.readouterr().out.split())
    assert main(["recipes", "list", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "methods" in err


def test_show_prints_the_recipe_after_its_base(capsys):
    assert main(["recipes", "show", "methods/lora"]) == 0
    out = capsys.readouterr().out
    base, lora = (ROOT / "recipes/base/minilm_cb.yaml").read_text(), (ROOT / "recipes/methods/lora.yaml").read_text()
    assert base in out and lora in out and out.index(base) < out.index(lora)


def test_cp_copies_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["recipes", "cp", "quickstart", str(tmp_path)]) == 0
    assert (tmp_path / "quickstart.yaml").read_text() == (ROOT / "recipes/quickstart.yaml").read_text()
    assert main(["recipes", "cp", "quickstart", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["recipes", "cp", "methods", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "lora.yaml").is_file()


@pytest.mark.parametrize("name", ["methods/lora", "methods/lora.yaml", "recipes/methods/lora.yaml"])
def test_config_names_resolve_to_the_packaged_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the name must come from the package
    assert Path(resolve_config(name)).resolve() == (ROOT / "recipes/methods/lora.yaml").resolve()
    argv = resolve_config_args(["fit", "--config=base/minilm_cb", "--config", name, "--data.task", "rte"])
    assert argv[1] == "--config=" + resolve_config("base/minilm_cb") and argv[3] == resolve_config(name)
    assert argv[1].endswith("recipes/base/minilm_cb.yaml") and argv[4:] == ["--data.task", "rte"]


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("quickstart.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert resolve_config("quickstart.yaml") == "quickstart.yaml"
    assert resolve_recipe_path("quickstart.yaml", base=tmp_path) == str(tmp_path / "quickstart.yaml")


def test_unknown_name_is_one_line_with_close_names():
    with pytest.raises(ConfigError) as err:
        resolve_config("methods/lorra")
    msg = str(err.value)
    assert "\n" not in msg and "'methods/lorra'" in msg and "petune recipes list" in msg


def test_a_name_cannot_climb_out_of_the_recipes_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        resolve_config("../pyproject.toml")


def test_installed_wheel_finds_its_recipes(tmp_path):
    """From a wheel (no checkout on sys.path) the names resolve inside site-packages."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "whl"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("pl_petune-*.whl")
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import pl_petune.packaged as p; print(p.resolve_config('methods/lora')); "
            "print(len(p.packaged_names())); print(*p.config_args('papers/ehft/table1/cb_lora')[1::2]); "
            "print(*p.config_args('methods/lora')[1::2])")
    run = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    path, count, cell, methods = run.stdout.splitlines()
    assert path.startswith(str(target)) and int(count) == len(packaged_names())
    # a method or cell file's base is found in the wheel too, first
    assert [Path(p).relative_to(target).as_posix() for p in cell.split()] == [
        "pl_petune/recipes/papers/ehft/table1/base.yaml", "pl_petune/recipes/papers/ehft/table1/cb_lora.yaml"]
    assert [Path(p).relative_to(target).as_posix() for p in methods.split()] == [
        "pl_petune/recipes/base/minilm_cb.yaml", "pl_petune/recipes/methods/lora.yaml"]
