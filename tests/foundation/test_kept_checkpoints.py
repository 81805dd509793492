"""``--run.keep_checkpoints true`` keeps what evaluation needs: no optimizer or scheduler state in any kept file
(unless ``--run.keep_optimizer_state true``), while ``petune test``, ``petune export`` and a plain reload still
give the recorded held-out numbers, and no resume trains on from a kept file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from pl_petune.cli import main
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _argv(tiny_bert, data_dir, tmp, *extra):
    return ["--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "32",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp / "runs"), "--run.store", str(tmp / "s.sqlite"), *extra]


def _kept(tmp, tiny_bert, data_dir, *extra):
    assert main(["fit", *_argv(tiny_bert, data_dir, tmp, "--run.keep_checkpoints", "true", *extra)]) == 0
    (rec,) = Store(tmp / "s.sqlite").records()
    return rec


@pytest.fixture(scope="module")
def kept(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("kept")
    return tmp, _kept(tmp, tiny_bert, data_dir)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("whole")
    return tmp, _kept(tmp, tiny_bert, data_dir, "--run.keep_optimizer_state", "true")


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_kept_files_hold_no_optimizer_state_and_are_smaller(kept, whole):
    _, rec = kept
    _, full = whole
    files = sorted((Path(rec["run_dir"]) / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in files} == {"best.ckpt", "last.ckpt"}
    for p in files:
        state = _state(p)
        assert "optimizer_states" not in state and "lr_schedulers" not in state, p.name
        assert {"state_dict", "hyper_parameters", "callbacks", "epoch"} <= set(state), p.name
    best, full_best = Path(rec["extra"]["best_checkpoint"]), Path(full["extra"]["best_checkpoint"])
    assert {"optimizer_states", "lr_schedulers"} <= set(_state(full_best))  # asked for: kept whole
    assert best.stat().st_size < 0.6 * full_best.stat().st_size
    # the same weights were tested either way, and each record hashes its own kept file
    assert rec["test_metrics"] == full["test_metrics"] and rec["run_key"] == full["run_key"]
    for r in (rec, full):
        path = Path(r["extra"]["best_checkpoint"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["best_checkpoint_sha256"]
    slim, whole_sd = _state(best)["state_dict"], _state(full_best)["state_dict"]
    assert slim.keys() == whole_sd.keys() and all(torch.equal(slim[k], whole_sd[k]) for k in slim)


def test_petune_test_on_a_kept_checkpoint_gives_the_recorded_numbers(kept, tiny_bert, data_dir, capsys):
    tmp, rec = kept
    capsys.readouterr()
    assert main(["test", *_argv(tiny_bert, data_dir, tmp), "--ckpt_path", rec["extra"]["best_checkpoint"]]) == 0
    out = capsys.readouterr().out
    printed = {k: float(v) for k, v in re.findall(r"(test/\w+)\s*[│|]?\s*([0-9.]+(?:e-?\d+)?)", out)}
    assert printed.keys() == rec["test_metrics"].keys()
    assert printed == pytest.approx(rec["test_metrics"], abs=1e-6)


def test_a_plain_reload_of_a_kept_checkpoint_scores_the_same(kept, tiny_bert, data_dir):
    import lightning as L

    from pl_petune.data import TaskDataModule
    from pl_petune.methods import FullFinetune

    _, rec = kept
    model = FullFinetune.load_from_checkpoint(rec["extra"]["best_checkpoint"], map_location="cpu",
                                              weights_only=False)
    dm = TaskDataModule(task="cb", data_dir=data_dir, tokenizer=tiny_bert, max_length=32, data_seed=1,
                        train_limit=32)
    dm.allow_leaky_test()  # a second look at the held-out split, outside the protocol: asked for explicitly
    out = L.Trainer(logger=False, enable_progress_bar=False).test(model, datamodule=dm, verbose=False)[0]
    assert out == pytest.approx(rec["test_metrics"], abs=1e-6)


def test_export_reads_a_kept_checkpoint(kept, tmp_path):
    from pl_petune.export import export

    _, rec = kept
    out = export(rec, tmp_path / "exported")
    assert (out / "head.safetensors").is_file() and (out / "backbone").is_dir()


def test_a_rerun_of_a_kept_run_starts_over_instead_of_resuming_a_kept_file(kept, tiny_bert, data_dir, capsys):
    tmp, rec = kept
    capsys.readouterr()
    assert main(["fit", *_argv(tiny_bert, data_dir, tmp, "--run.keep_checkpoints", "true", "--run.rerun",
                                "true")]) == 0
    err = capsys.readouterr().err
    assert "resuming run" not in err
    (again,) = Store(tmp / "s.sqlite").records()
    assert again["test_metrics"] == rec["test_metrics"] and again["epochs"] == rec["epochs"]


def test_slim_checkpoint_and_pick_resume_on_files(tmp_path):
    from pl_petune.checkpoint_io import atomic_torch_save, pick_resume, resumable, slim_checkpoint

    ckpt = tmp_path / "checkpoints"
    full = {"state_dict": {"w": torch.ones(2)}, "optimizer_states": [{"state": {}}], "lr_schedulers": [{}],
            "epoch": 1, "hyper_parameters": {"lr": 0.1}, "callbacks": {}}
    atomic_torch_save(full, ckpt / "last.ckpt")
    assert resumable(ckpt / "last.ckpt") and pick_resume(ckpt) == ckpt / "last.ckpt"
    assert slim_checkpoint(ckpt / "last.ckpt") is True and slim_checkpoint(ckpt / "last.ckpt") is False
    state = _state(ckpt / "last.ckpt")
    assert state["petune_kept"]["dropped"] == ["optimizer_states", "lr_schedulers"]
    assert torch.equal(state["state_dict"]["w"], torch.ones(2)) and state["hyper_parameters"] == {"lr": 0.1}
    assert not resumable(ckpt / "last.ckpt") and pick_resume(ckpt) is None
    assert (ckpt / "last.ckpt").is_file() and not list(ckpt.glob("*.corrupt-*"))  # passed over, not set aside
