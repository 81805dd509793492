"""`petune sweep FILE --slurm` on a real SLURM: submit, scancel a task mid-run, resubmit, every record once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _sweep(tmp_path: Path, backbone: str, data_dir: str) -> Path:
    path = tmp_path / "array.yaml"
    path.write_text(f"""name: array
method: grid
metric: {{name: dev/f1_macro, goal: maximize}}
command: ['${{env}}', '${{interpreter}}', -m, pl_petune, fit, --config, recipes/quickstart.yaml, '${{args}}']
parameters:
  run.seed: {{values: [1, 2, 3]}}
  model.init_args.backbone: {{value: {backbone}}}
  data.data_dir: {{value: {data_dir}}}
  data.task: {{value: cb}}
  data.train_limit: {{value: 48}}
  data.max_length: {{value: 32}}
  trainer.max_epochs: {{value: 4}}
  trainer.enable_progress_bar: {{value: false}}
  run.out_dir: {{value: {tmp_path / 'runs'}}}
""")
    return path


def _petune(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pl_petune", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _squeue(job: str) -> dict[str, str]:
    res = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=30)
    return {t: s for t, _, s in (ln.partition("|") for ln in res.stdout.split()) if t.split("_")[0] == job}


def _wait_done(job: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while _squeue(job) and time.time() < deadline:
        time.sleep(1)
    assert not _squeue(job), f"array {job} still queued: {_squeue(job)}"


def test_submit_kill_a_task_resubmit_and_every_record_is_complete_once(slurm_cluster, tmp_path, tiny_bert,
                                                                      data_dir):
    sweep = _sweep(tmp_path, tiny_bert, data_dir)
    store = tmp_path / "store" / "results.sqlite"
    folder = store.parent / "sweeps" / "array"
    first = _petune("sweep", str(sweep), "--store", str(store), "--max-parallel", "2", "--slurm", "--cpus-per-task=1")
    assert first.returncode == 0, first.stderr
    assert "submitted SLURM array" in first.stderr and "3 run(s)" in first.stderr
    job = first.stderr.split("submitted SLURM array ")[1].split()[0]
    script = next((folder / "slurm").glob("array-*.sh")).read_text()
    plan = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    for run in plan:  # each task runs exactly the argv the local runner and wandb agent run
        assert " ".join(run["command"][2:]) in script.replace("'", "")

    # `petune runs` shows the array's state next to the records while it is queued
    shown = _petune("runs", "--store", str(store), "--format", "json")
    rows = {r["run_key"]: r for r in json.loads(shown.stdout)}
    assert set(rows) == {r["run_key"] for r in plan}
    assert all(r["slurm"].startswith(f"{job}_") for r in rows.values())

    # cancel task 0 once its fit is training
    log = folder / "slurm" / f"{job}_0.out"
    deadline = time.time() + 300
    while time.time() < deadline and "trainable of" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    assert "trainable of" in log.read_text(), log.read_text()[-2000:] if log.exists() else "no log"
    subprocess.run(["scancel", f"{job}_0"], check=True, timeout=30)
    _wait_done(job)
    killed = next(r for r in plan if r["index"] == 0)
    records = {r["run_key"]: Path(r["run_dir"]) / "record.json" for r in plan}
    status = {k: json.loads(p.read_text())["status"] if p.exists() else None for k, p in records.items()}
    assert status[killed["run_key"]] != "complete", "the cancelled task completed before scancel reached it"
    assert sorted(v for k, v in status.items() if k != killed["run_key"]) == ["complete", "complete"]
    before = {k: json.loads(p.read_text())["created_at"] for k, p in records.items() if status[k] == "complete"}

    # the same command again submits only the run that is not complete
    second = _petune("sweep", str(sweep), "--store", str(store), "--max-parallel", "2", "--slurm", "--cpus-per-task=1")
    assert second.returncode == 0, second.stderr
    assert "with 1 run(s) (2 complete, 0 still queued)" in second.stderr, second.stderr
    job2 = second.stderr.split("submitted SLURM array ")[1].split()[0]
    _wait_done(job2)
    for key, path in records.items():
        rec = json.loads(path.read_text())
        assert rec["status"] == "complete", (key, rec["status"])
        if key in before:
            assert rec["created_at"] == before[key]  # complete runs were not trained again
    task_logs = "".join(p.read_text() for p in (folder / "slurm").glob("*.out"))
    assert task_logs.count(f"[{killed['run_key']}]") == 2  # the cancelled run started twice, the others once
    assert all(task_logs.count(f"[{k}]") == 1 for k in before)

    third = _petune("sweep", str(sweep), "--store", str(store), "--slurm")
    assert third.returncode == 0 and "nothing to submit (3 complete, 0 queued in SLURM)" in third.stderr, third.stderr
    # the folders are the truth: an index rebuilt from them holds each run once, complete
    assert _petune("index", str(tmp_path / "runs"), "--store", str(tmp_path / "merged.sqlite")).returncode == 0
    from pl_petune.store import Store

    merged = Store(tmp_path / "merged.sqlite").records()
    assert sorted(r["run_key"] for r in merged) == sorted(records)
    shown = json.loads(_petune("runs", "--runs", str(tmp_path / "runs"), "--format", "json").stdout)
    assert sorted((r["status"], r["protocol"]) for r in shown) == [("complete", "train_split")] * 3


def test_sbatch_refusing_the_array_is_one_line_and_leaves_no_script(slurm_cluster, tmp_path, tiny_bert, data_dir):
    sweep = _sweep(tmp_path, tiny_bert, data_dir)
    store = tmp_path / "store" / "results.sqlite"
    res = _petune("sweep", str(sweep), "--store", str(store), "--slurm", "--partition", "nope")
    assert res.returncode == 2, res.stderr
    line, = res.stderr.strip().splitlines()
    assert "sbatch refused the array (" in line and "nope" in line
    assert not list((store.parent / "sweeps" / "array" / "slurm").glob("*.sh"))
