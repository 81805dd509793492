"""``petune sweep FILE --slurm [sbatch options]``: one SLURM job array for the runs not complete.

Each array task runs one run (or ``--chunk`` runs, one after another): the very ``petune fit`` argv that the
local runner and ``wandb agent`` run, written into a readable batch script, plus a ``--run.store`` of its own
(one writer per SQLite file, so no two nodes share one). The run folders are the truth: a resubmission of
the same command skips runs whose folder holds a complete record (indexing them into the local store) and
runs of earlier arrays that SLURM still has pending or running, and submits the rest. ``--max-parallel N``
is the array's ``%N`` limit. ``petune runs`` shows each run's array task and its SLURM state.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from pl_petune.sweep.plan import PlannedRun
from pl_petune.sweep.spec import SweepError

SUBMISSIONS = "submissions.jsonl"
# squeue states in which a task still holds its runs (SLURM's job state codes).
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
               "SIGNALING", "STAGE_OUT", "PREEMPTED")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SweepError(f"--slurm needs SLURM's {name} on PATH; none found (run petune sweep --slurm on a node "
                         "that can submit jobs, or use --workers / --shard)")
    return path


def submissions(folder: Path) -> list[dict[str, Any]]:
    """The arrays submitted for a sweep folder, oldest first (``job_id``, ``tasks``: run keys per task)."""
    path = folder / "slurm" / SUBMISSIONS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def task_states(job_ids: Sequence[str]) -> dict[str, str]:
    """``{"<job>_<task>": state}`` of the array tasks SLURM still knows (``squeue --array --states all``),
    then of older ones where accounting is on (``sacct``); tasks known to neither are absent."""
    states: dict[str, str] = {}
    if not job_ids or shutil.which("squeue") is None:
        return states
    ids = ",".join(job_ids)
    # -t all: ended tasks too, while slurmctld still holds them (MinJobAge); -r: one line per array task
    # (not -j: squeue refuses the whole list when one job id has been purged)
    squeue = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"], capture_output=True, text=True,
                         timeout=30)
    wanted = set(job_ids)
    for line in squeue.stdout.splitlines():
        tid, _, state = line.strip().partition("|")
        if tid.split("_")[0] in wanted:
            states[tid] = state
    if shutil.which("sacct"):
        squeue = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State"], capture_output=True,
                             text=True, timeout=30)
        if squeue.returncode == 0:
            for line in squeue.stdout.splitlines():
                tid, _, state = line.strip().partition("|")
                if tid and "_" in tid and "[" not in tid:
                    states.setdefault(tid, state.split()[0] if state else state)
    return states


def run_states(folder: Path) -> dict[str, str]:
    """``{run key: "<job>_<task> <STATE>"}`` for every run of the sweep folder's arrays (latest array wins);
    a task SLURM no longer reports shows ``ended``."""
    subs = submissions(folder)
    states = task_states([str(s["job_id"]) for s in subs])
    out: dict[str, str] = {}
    for sub in subs:
        for i, keys in enumerate(sub["tasks"]):
            tid = f"{sub['job_id']}_{i}"
            for key in keys:
                out[key] = f"{tid} {states.get(tid, 'ended')}"
    return out


def queued_keys(folder: Path) -> set[str]:
    """Run keys that an earlier array of this sweep still holds (pending or running in SLURM)."""
    return {k for k, v in run_states(folder).items() if v.split()[-1] in LIVE_STATES}


def batch_script(runs: Sequence[Sequence[PlannedRun]], folder: Path, stamp: str, sweep_name: str) -> str:
    """The array's batch script: one ``case`` arm per task, holding its runs' ``petune fit`` commands."""
    stores = folder / "slurm" / "stores"
    lines = ["#!/bin/bash", f"# petune sweep {sweep_name}: SLURM array {stamp}, {sum(map(len, runs))} run(s) in "
             f"{len(runs)} task(s); written by petune, resubmit with the same petune sweep command",
             f"cd {shlex.quote(os.getcwd())}",
             'export WANDB_MODE="${WANDB_MODE:-offline}" PYTHONUNBUFFERED=1',
             'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
             f"export PETUNE_SWEEP={shlex.quote(sweep_name)}",
             f"STORE={shlex.quote(str(stores))}/{stamp}-task${{SLURM_ARRAY_TASK_ID}}.sqlite",
             "rc=0", 'case "$SLURM_ARRAY_TASK_ID" in']
    for i, chunk in enumerate(runs):
        lines.append(f"  {i})")
        for run in chunk:
            cmd = " ".join(shlex.quote(t) for t in run.command)
            lines.append(f"    echo \"# petune sweep {sweep_name}: run {run.index} [{run.key}] on $(hostname), "
                         "$(date '+%Y-%m-%d %H:%M:%S')\"")
            lines.append(f"    PETUNE_SWEEP_RUN_KEY={run.key} {cmd} --run.store=\"$STORE\" || rc=$?")
        lines.append("    ;;")
    lines += ["  *) echo \"no runs for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2;;", "esac", "exit $rc", ""]
    return "\n".join(lines)


def submit(runs: Sequence[PlannedRun], folder: Path, sweep_name: str, sbatch_args: Sequence[str],
           chunk: int = 1, max_parallel: Optional[int] = None,
           is_complete: Any = None) -> tuple[Optional[str], dict[str, int]]:
    """Submit one array for the runs that are neither complete nor held by an earlier array.

    Args:
        runs: the planned runs (distinct run keys), in launch order.
        folder: the sweep's folder (beside the store); scripts, task logs and submissions go to ``slurm/``.
        sweep_name: the sweep's name (job name ``petune-<name>``).
        sbatch_args: options passed to ``sbatch`` as given (partition, gres, time, ...).
        chunk: runs per array task.
        max_parallel: the array's ``%`` limit (tasks at once).
        is_complete: ``run -> bool`` (default: the run folder holds a complete record).

    Returns:
        The job id (None when nothing needed submitting) and counts ``complete``, ``queued``, ``submitted``.

    Raises:
        SweepError: bad ``chunk``/``max_parallel``, no ``sbatch``, or ``sbatch`` refusing the job (its message).
    """
    from pl_petune.index import folder_is_complete
    from pl_petune.records import atomic_write_text

    if chunk < 1:
        raise SweepError(f"--chunk must be >= 1 run per array task, got {chunk}")
    if max_parallel is not None and max_parallel < 1:
        raise SweepError(f"--max-parallel must be >= 1, got {max_parallel}")
    sbatch = _tool("sbatch")
    is_complete = is_complete or (lambda r: bool(r.run_dir) and folder_is_complete(r.run_dir))
    done = {r.key for r in runs if is_complete(r)}
    queued = queued_keys(folder) - done
    todo = [r for r in runs if r.key not in done and r.key not in queued]
    counts = {"complete": len(done), "queued": len({r.key for r in runs} & queued), "submitted": len(todo)}
    if not todo:
        return None, counts
    tasks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    sdir = folder / "slurm"
    (sdir / "stores").mkdir(parents=True, exist_ok=True)
    script = sdir / f"array-{stamp}.sh"
    atomic_write_text(script, batch_script(tasks, folder, stamp, sweep_name))
    script.chmod(0o755)
    array = f"0-{len(tasks) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    cmd = [sbatch, "--parsable", f"--array={array}", f"--job-name=petune-{sweep_name}",
           f"--output={sdir}/%A_%a.out", *sbatch_args, str(script)]
    submitted = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if submitted.returncode != 0:
        script.unlink(missing_ok=True)
        msg = " ".join((submitted.stderr or submitted.stdout).split())
        raise SweepError(f"sbatch refused the array ({msg or f'exit code {submitted.returncode}'}); command: "
                         f"{' '.join(shlex.quote(c) for c in cmd)}")
    job_id = submitted.stdout.strip().split(";")[0]
    entry = {"job_id": job_id, "submitted_at": time.time(), "script": str(script), "sbatch": list(sbatch_args),
             "tasks": [[r.key for r in t] for t in tasks]}
    old = (sdir / SUBMISSIONS).read_text(encoding="utf-8") if (sdir / SUBMISSIONS).is_file() else ""
    atomic_write_text(sdir / SUBMISSIONS, old + json.dumps(entry) + "\n")
    return job_id, counts


def say_submitted(name: str, job_id: Optional[str], counts: dict[str, int], folder: Path) -> None:
    """The one line ``petune sweep --slurm`` prints."""
    if job_id is None:
        print(f"petune sweep: {name}: nothing to submit ({counts['complete']} complete, {counts['queued']} queued "
              "in SLURM)", file=sys.stderr)
        return
    print(f"petune sweep: {name}: submitted SLURM array {job_id} with {counts['submitted']} run(s) "
          f"({counts['complete']} complete, {counts['queued']} still queued); task logs {folder / 'slurm'}; "
          "`petune runs` shows their state", file=sys.stderr)


__all__ = ["submit", "submissions", "task_states", "run_states", "queued_keys", "batch_script", "say_submitted"]
