"""The data module: tokenize once, dynamic padding, data-order seed, and the held-out guard."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from pl_petune.data.module import EpochSeededSampler, HeldOutAccessError, TaskDataModule, cache_root


def _dm(tiny_bert, data_dir, **kw):
    return TaskDataModule(**{"task": "cb", "data_dir": data_dir, "tokenizer": tiny_bert, "data_seed": 7, **kw})


def test_a_fresh_data_module_gives_no_held_out_rows(tiny_bert, data_dir):
    """No trainer, no completed fit: test_dataloader, official('dev') and the baseline are refused, even after
    the hooks a fit would call were called by hand."""
    dm = _dm(tiny_bert, data_dir)
    for attempt in (dm.test_dataloader, lambda: dm.official("dev")):
        with pytest.raises(HeldOutAccessError, match="before any fit completed on this data module"):
            attempt()
    with pytest.raises(HeldOutAccessError, match="majority baseline of cb reads the held-out labels"):
        dm.majority_baseline()
    dm.setup("fit")
    dm.teardown("fit")  # by hand, no trainer: not a completed fit
    with pytest.raises(HeldOutAccessError, match="before any fit completed"):
        dm.test_dataloader()
    assert len(dm.official("train")) == 250  # train holds no held-out row under train_split
    with pytest.raises(Exception, match="unknown official split 'test'; allowed: train, dev"):
        dm.official("test")


def test_allow_leaky_test_opens_it_and_marks_it_leaky(tiny_bert, data_dir):
    dm = _dm(tiny_bert, data_dir)
    assert not dm.leaky
    dm.allow_leaky_test()
    assert dm.leaky and next(iter(dm.test_dataloader()))["input_ids"].shape[0] == 32


def test_heldout_guard_inside_a_running_fit(tiny_bert, data_dir):
    """A callback that peeks at the test split during fit is stopped."""
    from pl_petune.methods import FullFinetune

    seen = {}

    class Peek(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            try:
                trainer.datamodule.test_dataloader()
            except HeldOutAccessError as err:
                seen["err"] = str(err)
                raise

    dm = _dm(tiny_bert, data_dir, train_limit=32)
    model = FullFinetune(task="cb", backbone=tiny_bert)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[Peek()],
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(HeldOutAccessError):
        trainer.fit(model, datamodule=dm)
    assert "requested by test_dataloader() during fit" in seen["err"]


def test_leaky_protocol_allows_dev_as_test(tiny_bert, data_dir):
    dm = _dm(tiny_bert, data_dir, protocol="leaky")
    dm.setup("fit")
    assert dm.test_dataloader() is not None
    assert dm.split_sizes() == {"train": 250, "dev": 56, "test": 56}


def test_dev_split_leaky_selects_and_reports_on_dev_split_s_dev2(tiny_bert, data_dir):
    leaky, fair = _dm(tiny_bert, data_dir, protocol="dev_split_leaky"), _dm(tiny_bert, data_dir, protocol="dev_split")
    leaky.setup("fit")
    assert leaky.leaky and not fair.leaky
    assert leaky.test_dataloader() is not None  # no held-out guard: the leak is the point, and it is recorded
    assert leaky.split_sizes() == {"train": 250, "dev": 28, "test": 28} == {**fair.split_sizes(), "dev": 28}


def test_tokenized_once_and_reused(tiny_bert, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PETUNE_CACHE", str(tmp_path))  # a cache of its own: other tests share the session's
    dm = _dm(tiny_bert, data_dir)
    dm.setup("fit")
    entries = sorted(p.name for p in cache_root().iterdir() if p.name.startswith("cb-"))
    assert len(entries) == 2  # one cache per official split
    dm2 = _dm(tiny_bert, data_dir, data_seed=8, protocol="petuning")  # another seed and protocol
    dm2.setup("fit")
    assert sorted(p.name for p in cache_root().iterdir() if p.name.startswith("cb-")) == entries


def test_dynamic_padding_and_data_seed_order(tiny_bert, data_dir):
    dm = _dm(tiny_bert, data_dir)
    dm.setup("fit")
    lengths = [b["attention_mask"].sum(1).max().item() for b in dm.train_dataloader()]
    widths = [b["input_ids"].shape[1] for b in dm.train_dataloader()]
    assert widths == lengths and len(set(widths)) > 1  # each batch is as wide as its longest row
    fixed = _dm(tiny_bert, data_dir, pad_to_max_length=True, max_length=64)
    fixed.setup("fit")
    assert {b["input_ids"].shape[1] for b in fixed.train_dataloader()} == {64}

    def order(seed, epoch):
        s = EpochSeededSampler(100, seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(1, 0) == order(1, 0) and order(1, 0) != order(2, 0) and order(1, 0) != order(1, 1)


def test_copa_is_multiple_choice(tiny_bert, data_dir):
    dm = TaskDataModule(task="copa", data_dir=data_dir, tokenizer=tiny_bert)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].dim() == 3 and batch["input_ids"].shape[1] == 2
    assert batch["labels"].dtype == torch.long


def test_a_missing_data_file_is_one_line_from_the_cli(tmp_path):
    """The issue's reproduction, in a fresh process: exit 2, one line naming the file, nothing written."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "data" / "glue").mkdir(parents=True)
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "pl_petune", "fit", "--config", str(root / "recipes" / "quickstart.yaml"),
            "--data.task", "mrpc", "--data.data_dir", str(tmp_path / "data"),
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(tmp_path / "s.sqlite")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert "glue/MRPC/train.tsv: file not found for task mrpc split train" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.sqlite").exists()


def test_missing_files_are_data_errors_wherever_they_are_met(tiny_bert, data_dir, tmp_path):
    import shutil

    from pl_petune.data import DataError

    cb = tmp_path / "super_glue" / "CB"
    cb.mkdir(parents=True)
    shutil.copy(f"{data_dir}/super_glue/CB/train.jsonl", cb)
    from pl_petune.data.module import check_data_files

    with pytest.raises(DataError, match="CB/val.jsonl: file not found for task cb split dev; the folder has: "
                                        "train.jsonl"):
        check_data_files("cb", str(tmp_path))
    with pytest.raises(DataError, match="CB/val.jsonl: file not found for task cb split dev"):
        TaskDataModule(task="cb", data_dir=str(tmp_path), tokenizer=tiny_bert).setup("fit")
    shutil.copy(f"{data_dir}/super_glue/CB/val.jsonl", cb)
    with pytest.raises(DataError, match="RTE/val.jsonl: file not found for task rte split dev"):  # an OOD set's
        check_data_files("cb", str(tmp_path), {"rte": {"task": "rte", "label_map": {}}})
    dm = TaskDataModule(task="cb", data_dir=str(tmp_path), tokenizer=tiny_bert)
    (cb / "train.jsonl").unlink()  # gone after the check: source_id's stat must not surface as a traceback
    with pytest.raises(DataError, match="CB/train.jsonl: file not found"):
        dm.setup("fit")
