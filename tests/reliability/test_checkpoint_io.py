"""Atomic checkpoint writes, damaged-checkpoint detection and the choice of the file a run resumes from."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from pl_petune.checkpoint_io import (AtomicCheckpointIO, CorruptCheckpointError, DiskFullError, pick_resume,
                                     verify_checkpoint)


def _ckpt(step: int) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), float(step))}, "epoch": step, "global_step": step}


def _save(path: Path, step: int) -> Path:
    AtomicCheckpointIO().save_checkpoint(_ckpt(step), path)
    return path


def test_save_is_same_folder_temp_then_rename(tmp_path, monkeypatch):
    target = tmp_path / "ck" / "last.ckpt"
    _save(target, 1)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src).parent, Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    _save(target, 2)
    assert seen == [(target.parent, target)], "the new file must be renamed over the old one from the same folder"
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_mid_write_keeps_old_file_and_says_one_line(tmp_path, monkeypatch, code):
    target = _save(tmp_path / "last.ckpt", 1)
    before = target.read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(100)  # half a file on disk, then the device is full
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as info:
        _save(target, 2)
    assert "\n" not in str(info.value) and str(target) in str(info.value) and "rerun" in str(info.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "no temporary file is left behind"


def test_verify_accepts_intact_and_refuses_truncated_damaged_and_foreign(tmp_path):
    good = _save(tmp_path / "good.ckpt", 3)
    verify_checkpoint(good)
    data = good.read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flip.ckpt").write_bytes(bytes(flipped))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "yaml.ckpt").write_text("model:\n  lr: 1\n")
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    for name in ("trunc", "flip", "empty", "yaml", "tensor"):
        with pytest.raises(CorruptCheckpointError):
            verify_checkpoint(tmp_path / f"{name}.ckpt")


def test_pick_resume_sets_aside_a_truncated_last_and_falls_back(tmp_path):
    warnings: list[str] = []
    best = _save(tmp_path / "best.ckpt", 2)
    last = _save(tmp_path / "last.ckpt", 3)
    assert pick_resume(tmp_path, warnings.append) == last and warnings == []
    last.write_bytes(last.read_bytes()[:500])
    assert pick_resume(tmp_path, warnings.append) == best
    assert len(warnings) == 1 and "last.ckpt" in warnings[0] and "set aside" in warnings[0]
    assert not last.exists() and len(list(tmp_path.glob("last.ckpt.corrupt-*"))) == 1
    best.write_bytes(b"\0" * 10)
    assert pick_resume(tmp_path, warnings.append) is None, "nothing intact: start over"
    assert list(tmp_path.glob("*.ckpt")) == []
    assert pick_resume(tmp_path / "missing", warnings.append) is None


def test_trainer_checkpoints_through_the_plugin(tmp_path, monkeypatch):
    """A plain Lightning Trainer given the plugin writes its checkpoints atomically (no system temp dir)."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    calls = []
    real = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", lambda self, c, p, storage_options=None: (calls.append(p), real(self, c, p, storage_options)))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(BoringModel())
    assert calls and all(Path(p).parent.is_dir() for p in calls)
    verify_checkpoint(calls[-1])
