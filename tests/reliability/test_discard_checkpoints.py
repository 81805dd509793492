"""A kill while a finished run removes its checkpoints must not leave a ``last.ckpt`` whose best checkpoint is
gone (a rerun would resume from it and fail on the missing file)."""

from __future__ import annotations

import shutil

import pytest

from pl_petune.lightning_cli import discard_checkpoints


def _folder(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("best.ckpt", "best-v1.ckpt", "last.ckpt"):
        (ckpts / name).write_bytes(b"x")
    return ckpts


def test_interrupted_removal_leaves_nothing_to_resume_from(tmp_path, monkeypatch):
    ckpts = _folder(tmp_path)
    real = shutil.rmtree

    def dies_half_way(path, ignore_errors=False):
        (path / "best-v1.ckpt").unlink()  # the best goes first, then the process is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        discard_checkpoints(ckpts)
    assert not (ckpts / "last.ckpt").exists() and not ckpts.exists()
    leftovers = list(ckpts.parent.glob(".checkpoints.discard-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "last.ckpt").exists()

    monkeypatch.setattr(shutil, "rmtree", real)
    _folder(tmp_path)  # the rerun trained again and finished
    discard_checkpoints(ckpts)
    assert list((tmp_path / "run").iterdir()) == []


def test_missing_folder_is_fine(tmp_path):
    (tmp_path / "run").mkdir()
    discard_checkpoints(tmp_path / "run" / "checkpoints")
    assert list((tmp_path / "run").iterdir()) == []
