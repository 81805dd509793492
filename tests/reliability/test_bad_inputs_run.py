"""Bad run, trainer, data and CLI values (issue 15 items 3, 5, 7, 10): each exits 2 with exactly one line on
stderr naming the value and what is allowed, nothing on stdout, and writes nothing (no store, no run folder).

The rows are listed in docs/reliability.md, section 'More bad-input rows, by area'."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pl_petune.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")


def _file(root: Path, name: str, data: str | bytes) -> str:
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def _truncated_ckpt(root: Path) -> str:
    path = root / "half.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(256, 256)}, "epoch": 0}, path)
    path.write_bytes(path.read_bytes()[:20000])
    return str(path)


def _missing_accelerator() -> str:
    return "cuda" if not torch.cuda.is_available() else "mps"


# (id, args after the recipe and the test's defaults, regex the one line must match). ``r`` is the test folder.
FIT = [
    ("max_length beyond the backbone's positions", lambda r: ["--data.max_length", "512"],
     r"data.max_length 512 is beyond the 140 positions of backbone '.*'; use data.max_length <= 140"),
    ("negative epochs", lambda r: ["--trainer.max_epochs", "-3"],
     r"trainer.max_epochs -3 trains nothing to select; use a whole number of epochs >= 1"),
    ("zero epochs", lambda r: ["--trainer.max_epochs", "0"], r"trainer.max_epochs 0 trains nothing to select"),
    ("unlimited epochs", lambda r: ["--trainer.max_epochs", "-1"],
     r"trainer.max_epochs -1 \(no limit\) leaves the learning-rate schedule without an end; use .* >= 1"),
    ("zero steps", lambda r: ["--trainer.max_steps", "0"], r"trainer.max_steps 0 trains nothing; use -1 .* or a number >= 1"),
    ("no training batches", lambda r: ["--trainer.limit_train_batches", "0"],
     r"trainer.limit_train_batches 0(\.0)? leaves no training batches; use .*\(0, 1\]"),
    ("no development batches", lambda r: ["--trainer.limit_val_batches", "0"],
     r"trainer.limit_val_batches 0(\.0)? leaves no development batches"),
    ("validation never reached", lambda r: ["--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "3"],
     r"trainer.check_val_every_n_epoch 3 is more than trainer.max_epochs 2: .*; use at most 2"),
    ("fast_dev_run in fit", lambda r: ["--trainer.fast_dev_run", "true"],
     r"trainer.fast_dev_run True turns off checkpoints and logs.*use --trainer.max_epochs 1"),
    ("zero accumulation", lambda r: ["--trainer.accumulate_grad_batches", "0"],
     r"trainer.accumulate_grad_batches 0 must be a whole number >= 1"),
    ("negative gradient clip", lambda r: ["--trainer.gradient_clip_val", "-1"],
     r"trainer.gradient_clip_val -1(\.0)? must be >= 0"),
    ("zero devices", lambda r: ["--trainer.devices", "0"], r"trainer.devices '?0'? selects no device; use a number >= 1"),
    ("accelerator the machine lacks", lambda r: ["--trainer.accelerator", _missing_accelerator()],
     r"trainer.accelerator '(cuda|mps)' is not available on this machine; usable here: auto, cpu"),
    ("unknown accelerator", lambda r: ["--trainer.accelerator", "gpx"],
     r"trainer.accelerator 'gpx' is unknown; known: auto, cpu, cuda, gpu, mps"),
    ("save_top_k 0", lambda r: ["--checkpoint.save_top_k", "0"],
     r"checkpoint.save_top_k 0 keeps no best checkpoint to test; use 1"),
    ("save_top_k below -1", lambda r: ["--checkpoint.save_top_k", "-2"], r"checkpoint.save_top_k -2 keeps no best"),
    ("checkpoint every 0 epochs", lambda r: ["--checkpoint.every_n_epochs", "0"],
     r"checkpoint.every_n_epochs 0 never saves a checkpoint; use a whole number >= 1"),
    ("negative patience", lambda r: ["--early_stopping.patience", "-1"],
     r"early_stopping.patience -1 must be a whole number of validations >= 0"),
    ("negative min_delta", lambda r: ["--early_stopping.min_delta", "-0.1"], r"early_stopping.min_delta -0.1 must be >= 0"),
    ("negative seed", lambda r: ["--run.seed", "-1"],
     r"run.seed -1 is outside the seed range; use a whole number from 0 to 4294967295"),
    ("data seed beyond numpy's range", lambda r: ["--data.data_seed", str(2**32)],
     r"data.data_seed 4294967296 is outside the seed range; use a whole number from 0 to 4294967295"),
    ("init seed beyond numpy's range", lambda r: ["--model.init_args.init_seed", "99999999999"],
     r"init_seed must be an integer in \[0, 4294967295\], got 99999999999"),
    ("min_epochs out of range", lambda r: ["--trainer.min_epochs", "-1"],
     r"trainer.min_epochs -1 must be a whole number from 0 to trainer.max_epochs 10"),
    ("several devices for one run", lambda r: ["--trainer.accelerator", "cpu", "--trainer.devices", "3"],
     r"trainer.devices '?3'? would train one run on several devices; petune fit trains one run on one device"),
    ("float16 on CPU", lambda r: ["--trainer.accelerator", "cpu", "--trainer.precision", "16-mixed"],
     r"trainer.precision '16-mixed' needs a GPU and runs on CPU here; use 32-true or bf16-mixed"),
    ("seed_everything beyond numpy's range", lambda r: ["--seed_everything", "-1"],
     r"seed_everything -1 is outside the seed range; use a whole number from 0 to 4294967295"),
    ("negative dataloader workers", lambda r: ["--data.num_workers", "-1"], r"data.num_workers -1 must be 0 .* or more"),
    ("unknown backbone name", lambda r: ["--model.init_args.backbone", "bert-base-uncasd"],
     r"unknown backbone 'bert-base-uncasd': not an alias \(.*minilm.*\), not a model folder, and not in the local"),
    ("empty backbone folder", lambda r: ["--model.init_args.backbone", str((r / "empty_model").mkdir() or r / "empty_model")],
     r"backbone folder '.*empty_model' has no config.json; pass a Hugging Face model folder"),
    ("missing backbone folder", lambda r: ["--model.init_args.backbone", str(r / "no_model")],
     r"backbone '.*no_model' is not a model folder"),
    ("run.out_dir is a file", lambda r: ["--run.out_dir", _file(r, "out_file", "x")],
     r"run.out_dir '.*out_file' is a file, not a folder; pass a folder"),
    ("run.out_dir inside a file", lambda r: ["--run.out_dir", _file(r, "f", "x") + "/runs"],
     r"run.out_dir '.*f/runs' cannot be created: '.*f' is a file, not a folder"),
    ("store is a folder", lambda r: ["--run.store", str(r)],
     r"run.store '.*' is a folder, not a file; pass a file path such as .*results.sqlite"),
    ("store inside a file", lambda r: ["--run.store", _file(r, "g", "x") + "/s.sqlite"],
     r"run.store '.*g/s.sqlite' cannot be created: '.*g' is a file"),
    ("non-UTF-8 recipe", lambda r: ["--config", _file(r, "latin1.yaml", b"data:\n  task: cb\n# caf\xe9\n")],
     r"recipe '.*latin1.yaml' is not UTF-8 text \(byte 0xe9 on line 3\); save it as UTF-8"),
    ("duplicate YAML key", lambda r: ["--config", _file(r, "dup.yaml", "trainer:\n  max_epochs: 2\ntrainer:\n  max_epochs: 3\n")],
     r"recipe '.*dup.yaml': key 'trainer' is given twice \(lines 1 and 3\); YAML keys must be unique"),
    ("duplicate nested YAML key", lambda r: ["--config", _file(r, "dup2.yaml", "early_stopping:\n  patience: 2\n  patience: 5\n")],
     r"recipe '.*dup2.yaml': key 'patience' is given twice \(lines 2 and 3\)"),
    ("missing ckpt_path", lambda r: ["--ckpt_path", str(r / "nope.ckpt")],
     r"ckpt_path '.*nope.ckpt' does not exist; pass a .ckpt file petune fit saved"),
    ("ckpt_path not a checkpoint", lambda r: ["--ckpt_path", _file(r, "notes.ckpt", "model: x\n")],
     r"ckpt_path: .*notes.ckpt is not a torch checkpoint archive .*; pass a .ckpt file petune fit saved"),
    ("truncated ckpt_path", lambda r: ["--ckpt_path", _truncated_ckpt(r)],
     r"ckpt_path: .*half.ckpt is (not a torch checkpoint archive|damaged)"),
]

TOOLS = [
    ("tool: unknown option", ["runs", "--bogus"], r"^petune runs: error: unrecognized arguments: --bogus \(see petune runs --help\)$"),
    ("tool: option without its value", ["report", "--digits"], r"argument --digits: expected one argument \(see petune report --help\)"),
    ("tool: missing argument", ["sweep"], r"the following arguments are required: sweep \(see petune sweep --help\)"),
    ("tool: invalid choice", ["runs", "--format", "xml"], r"invalid choice: 'xml' \(choose from 'table', 'json', 'csv'\)"),
]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def _fit_argv(r: Path, tiny_bert: str, extra: list[str]) -> list[str]:
    return ["fit", "--config", QUICK, "--model.init_args.backbone", tiny_bert, "--run.store",
            str(r / "out" / "s.sqlite"), "--run.out_dir", str(r / "out" / "runs"), "--trainer.enable_progress_bar",
            "false", *extra]


def _check_one_line(capsys, pattern: str) -> None:
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert captured.out == "", captured.out
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("name, extra, pattern", FIT, ids=[c[0] for c in FIT])
def test_bad_fit_value(tmp_path, capsys, tiny_bert, data_dir, monkeypatch, name, extra, pattern):
    monkeypatch.setenv("PETUNE_DATA_DIR", data_dir)
    monkeypatch.chdir(tmp_path)
    argv = _fit_argv(tmp_path, tiny_bert, extra(tmp_path))
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    _check_one_line(capsys, r"^petune fit: error: " + pattern if not pattern.startswith("^") else pattern)
    assert _snapshot(tmp_path) == before, f"{name}: files were written"


@pytest.mark.parametrize("name, argv, pattern", TOOLS, ids=[c[0] for c in TOOLS])
def test_bad_tool_argument_is_one_line(tmp_path, capsys, monkeypatch, name, argv, pattern):
    monkeypatch.chdir(tmp_path)
    assert main(list(argv)) == 2
    _check_one_line(capsys, pattern)
    assert list(tmp_path.iterdir()) == []


HOLD = """
import sys, time
from pl_petune.lightning_cli import run_key_for
from pl_petune.runlock import RunLock
from pathlib import Path
argv = sys.argv[1:]
key = run_key_for(argv)
lock = RunLock(Path(sys.argv[sys.argv.index("--run.out_dir") + 1]) / "cb" / "finetune" / key)
print(key, flush=True)
time.sleep(120)
"""


def test_run_owned_by_another_process(tmp_path, capsys, tiny_bert, data_dir, monkeypatch):
    monkeypatch.setenv("PETUNE_DATA_DIR", data_dir)
    monkeypatch.chdir(tmp_path)
    argv = _fit_argv(tmp_path, tiny_bert, [])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, *argv], stdout=subprocess.PIPE, text=True)
    try:
        key = holder.stdout.readline().strip()
        assert key, "the holder did not take the lock"
        before = _snapshot(tmp_path)
        assert main(argv) == 2
        _check_one_line(capsys, rf"^petune fit: error: run {key} is being trained by pid {holder.pid} on host .*; "
                                r"wait for it to end or stop that process")
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_whole_output_of_a_refused_fit_is_one_line(tmp_path, tiny_bert, data_dir):
    """In a fresh process (where warnings and Lightning's banners really print): a data error found after the
    model and trainer were built leaves exactly one line on stderr and nothing on stdout."""
    data = tmp_path / "data" / "super_glue" / "CB"
    data.mkdir(parents=True)
    rows = [json.dumps({"premise": "p", "hypothesis": "h", "label": lab, "idx": i})
            for i, lab in enumerate(["entailment", "contradiction", "neutral"] * 10)]
    (data / "train.jsonl").write_text("\n".join(rows + ["{oops"]) + "\n")
    (data / "val.jsonl").write_text(rows[0] + "\n")
    argv = _fit_argv(tmp_path, tiny_bert, ["--data.data_dir", str(tmp_path / "data")])
    done = subprocess.run([sys.executable, "-m", "pl_petune", *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and "row 31: not valid JSON" in done.stderr
    assert not (tmp_path / "out").exists()


def test_every_row_is_documented():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for name in [c[0] for c in FIT] + [c[0] for c in TOOLS] + ["run owned by another process"]:
        assert f"| {name} |" in doc, f"no bad-input row for {name!r}"
