"""Faults during ``petune fit``, met as a user meets them (a real subprocess, a real signal, a full disk), each
followed by a rerun that must end with the numbers of an uninterrupted run, and one record, never two."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _argv(tiny_bert: str, data_dir: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pl_petune", "fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"),
            "--model.init_args.backbone", tiny_bert, "--model.init_args.lr", "1e-3",
            "--data.data_dir", data_dir, "--data.train_limit", "96", "--data.max_length", "48",
            "--data.batch_size", "8", "--trainer.max_epochs", "3", "--early_stopping.patience", "10",
            "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(out / "runs"), "--run.store", str(out / "store.sqlite"), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600, **kw)


def _same_numbers(rec: dict, ref: dict) -> None:
    assert rec["run_key"] == ref["run_key"]
    assert rec["test_metrics"] == pytest.approx(ref["test_metrics"], abs=1e-6)
    assert rec["dev_metrics"] == pytest.approx(ref["dev_metrics"], abs=1e-6)
    assert (rec["best_epoch"], rec["steps"], rec["epochs"]) == (ref["best_epoch"], ref["steps"], ref["epochs"])


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("petune fit:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert, data_dir):
    """An uninterrupted run: its folder and its record."""
    out = tmp_path_factory.mktemp("ref")
    done = _run(_argv(tiny_bert, data_dir, out))
    assert done.returncode == 0, done.stderr[-3000:]
    (rec,) = Store(out / "store.sqlite").records()
    return out, rec


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _freeze_after_first_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 600) -> Path:
    """SIGSTOP ``proc``'s group the moment its first ``last.ckpt`` lands (epoch 0); return that file."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = list((out / "runs").glob("cb/finetune/*/checkpoints/last.ckpt"))
        if found:
            os.killpg(proc.pid, signal.SIGSTOP)
            assert torch.load(found[0], map_location="cpu", weights_only=False)["epoch"] == 0
            return found[0]
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the run ended (rc={proc.wait()}) before its first checkpoint")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_marks_interrupted_and_the_rerun_resumes_to_the_same_numbers(tmp_path, tiny_bert, data_dir,
                                                                             reference, sig):
    _, ref = reference
    argv = _argv(tiny_bert, data_dir, tmp_path)
    proc = _start(argv)
    last = _freeze_after_first_checkpoint(proc, tmp_path)
    os.kill(proc.pid, sig)  # to the fit process only, as SLURM's scancel / a terminal's Ctrl+C reach it
    os.killpg(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    (line,) = _errors(stderr)
    assert f"interrupted by {sig.name}" in line and "marked interrupted" in line and str(last) in line
    assert "Traceback" not in stderr
    store = Store(tmp_path / "store.sqlite")
    assert [r["status"] for r in store.rows()] == ["interrupted"]
    on_disk = json.loads((last.parent.parent / "record.json").read_text())
    assert on_disk["status"] == "interrupted" and on_disk["extra"]["interrupted"]["signal"] == sig.name

    again = _run(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run" in again.stderr
    (rec,) = store.records()
    _same_numbers(rec, ref)
    assert [r["status"] for r in store.rows()] == ["complete"]


def test_second_fit_of_the_same_run_is_refused_naming_the_owner(tmp_path, tiny_bert, data_dir, reference):
    _, ref = reference
    argv = _argv(tiny_bert, data_dir, tmp_path)
    first = _start(argv)
    last = _freeze_after_first_checkpoint(first, tmp_path)
    run_dir = last.parent.parent
    before = {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    try:
        second = _run(argv)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-3000:]
    (line,) = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert f"pid {first.pid}" in line and "is being trained by" in line and ref["run_key"] in line
    assert {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before, "the refused fit wrote nothing"
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    (rec,) = Store(tmp_path / "store.sqlite").records()
    _same_numbers(rec, ref)


def test_killed_owner_leaves_a_stale_lock_that_the_rerun_takes_over(tmp_path, tiny_bert, data_dir, reference):
    _, ref = reference
    argv = _argv(tiny_bert, data_dir, tmp_path)
    proc = _start(argv)
    last = _freeze_after_first_checkpoint(proc, tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = json.loads((last.parent.parent / ".lock").read_text())
    assert lock["pid"] == proc.pid
    again = _run(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    _same_numbers(Store(tmp_path / "store.sqlite").records()[0], ref)


def test_killed_rerun_keeps_the_complete_record_until_the_new_one_is_complete(tmp_path, tiny_bert, data_dir,
                                                                               reference):
    ref_out, ref = reference
    shutil.copytree(ref_out, tmp_path, dirs_exist_ok=True)
    store = Store(tmp_path / "store.sqlite")
    (record_json,) = (tmp_path / "runs").glob("cb/finetune/*/record.json")
    old_json = record_json.read_text()
    argv = _argv(tiny_bert, data_dir, tmp_path, "--run.rerun", "true")
    proc = _start(argv)
    _freeze_after_first_checkpoint(proc, tmp_path)
    assert store.records() == [ref] and record_json.read_text() == old_json, "the running rerun replaced it"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [r["status"] for r in store.rows()] == ["complete"] and store.records() == [ref]
    assert record_json.read_text() == old_json

    again = _run(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    (rec,) = store.records()
    _same_numbers(rec, ref)
    assert rec["created_at"] >= ref["created_at"] and json.loads(record_json.read_text())["status"] == "complete"


DISK_FULL = """
import errno, os, sys
import torch
real, calls = torch.save, [0]
def save(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] > int(os.environ["PETUNE_TEST_SAVES"]):  # the disk fills up half-way through this checkpoint
        real(obj, f, *a, **k)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(obj, f, *a, **k)
torch.save = save
from pl_petune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_during_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path, tiny_bert, data_dir, reference):
    _, ref = reference
    argv = _argv(tiny_bert, data_dir, tmp_path)
    full = subprocess.run([sys.executable, "-c", DISK_FULL, *argv[3:]], env={**_env(), "PETUNE_TEST_SAVES": "2"},
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-3000:]
    (line,) = _errors(full.stderr)
    assert "disk full writing" in line and "rerun the same command to resume" in line
    assert "Traceback" not in full.stderr
    (ckpts,) = {p.parent for p in (tmp_path / "runs").rglob("*.ckpt")}
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"], "no half-written file is left"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert [r["status"] for r in Store(tmp_path / "store.sqlite").rows()] == ["failed"]

    again = _run(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run" in again.stderr
    _same_numbers(Store(tmp_path / "store.sqlite").records()[0], ref)


def test_disk_full_on_a_real_small_file_system(tmp_path, tiny_bert, data_dir, reference):
    """The run folder on a tmpfs that holds epoch 0's checkpoints but not epoch 1's; then it grows."""
    _, ref = reference
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test covers the logic")
    try:
        argv = _argv(tiny_bert, data_dir, mnt) + ["--run.store", str(tmp_path / "store.sqlite"),
                                                  "--run.keep_checkpoints", "true"]
        one = _freeze_probe_size(argv, mnt)
        subprocess.run(["mount", "-o", f"remount,size={int(one * 2.5)}", str(mnt)], check=True)
        full = _run(argv)
        assert full.returncode == 2, full.stderr[-3000:]
        (line,) = _errors(full.stderr)
        assert "disk full" in line and "Traceback" not in full.stderr
        for ck in mnt.rglob("*.ckpt"):
            from pl_petune.checkpoint_io import verify_checkpoint

            verify_checkpoint(ck)  # every checkpoint left is whole
        assert not list(mnt.rglob("*.tmp")), "no temporary file is left"
        subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)
        again = _run(argv)
        assert again.returncode == 0, again.stderr[-3000:]
        _same_numbers(Store(tmp_path / "store.sqlite").records()[0], ref)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _freeze_probe_size(argv: list[str], mnt: Path) -> int:
    """The size of one checkpoint of this run (measured by a throw-away run into ``mnt``, then cleaned)."""
    probe = mnt / "probe"
    proc = _start([*argv[:-4], "--run.out_dir", str(probe / "runs"), "--run.store", str(probe / "s.sqlite")])
    deadline = time.time() + 600
    size = 0
    while time.time() < deadline and proc.poll() is None:
        found = list((probe / "runs").glob("cb/finetune/*/checkpoints/last.ckpt"))
        if found:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            size = found[0].stat().st_size
            break
        time.sleep(0.02)
    shutil.rmtree(probe, ignore_errors=True)
    assert size > 0
    return size
