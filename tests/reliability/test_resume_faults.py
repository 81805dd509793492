"""Fast fault tests in one process: a damaged resume file, a signal before training, a full disk's one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from pl_petune.cli import main
from pl_petune.faults import one_line
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _argv(tmp_path: Path, tiny_bert: str, data_dir: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "32",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(tmp_path / "s.sqlite")]


def _run_dir(argv: list[str]) -> Path:
    from pl_petune.lightning_cli import run_key_for

    key = run_key_for(list(argv))
    return Path(argv[argv.index("--run.out_dir") + 1]) / "cb" / "finetune" / key


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_last_ckpt_is_set_aside_with_one_warning_and_the_run_starts_over(tmp_path, capsys, tiny_bert,
                                                                                  data_dir, damage):
    argv = _argv(tmp_path, tiny_bert, data_dir)
    ckpts = _run_dir(argv) / "checkpoints"
    ckpts.mkdir(parents=True)
    import torch

    torch.save({"state_dict": {"w": torch.zeros(128, 128)}, "epoch": 0}, ckpts / "last.ckpt")
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes({"truncated": data[: len(data) // 3], "empty": b"",
                                       "garbage": os.urandom(4096)}[damage])
    assert main(argv) == 0
    err = capsys.readouterr().err
    warns = [ln for ln in err.splitlines() if "set aside" in ln]
    assert len(warns) == 1 and "last.ckpt" in warns[0] and "resuming" not in err
    (rec,) = Store(tmp_path / "s.sqlite").records()
    assert rec["resumed"] is False and rec["status"] == "complete"
    assert len(list(ckpts.parent.glob("checkpoints/last.ckpt.corrupt-*"))) in (0, 1)  # discarded with the folder
    assert main(argv) == 0, "a rerun never trips on it again"


def test_signal_before_training_is_one_line_and_leaves_nothing(tmp_path, capsys, tiny_bert, data_dir, monkeypatch):
    from pl_petune.data.module import TaskDataModule

    real = TaskDataModule.split_sizes

    def terminated(self):
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM's preemption notice while the data is being read
        return real(self)

    monkeypatch.setattr(TaskDataModule, "split_sizes", terminated)
    before = signal.getsignal(signal.SIGTERM)
    argv = _argv(tmp_path, tiny_bert, data_dir)
    assert main(argv) == 128 + signal.SIGTERM
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert lines == ["petune fit: interrupted by SIGTERM before training started; nothing was recorded: rerun the "
                     "same command"], lines
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.sqlite").exists()
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is restored"


def test_disk_full_anywhere_is_one_line_exit_2():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/cb/x/record.json")
    assert one_line(RuntimeError("a bug")) is None, "a bug keeps its traceback"
    wrapped = RuntimeError("logger failed")
    wrapped.__cause__ = full
    msg, code = one_line(wrapped)
    assert code == 2 and "disk full writing /runs/cb/x/record.json" in msg and "\n" not in msg
    msg, code = one_line(sqlite3.OperationalError("database or disk is full"))
    assert code == 2 and "results store" in msg


def test_interrupted_record_passes_validation():
    from pl_petune.records import validate

    validate({"schema": 1, "status": "interrupted", "run_key": "k"})
    assert json.dumps({"status": "interrupted"})
