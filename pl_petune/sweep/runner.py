"""The local runner: planned runs, N at once, each its own ``petune fit`` process, each run exactly once.

Before a run starts it is claimed twice: in the local store (one SQLite transaction; attempts and failures
are counted there) and in its run folder (:mod:`pl_petune.sweep.claims`), which is what keeps runners on
other nodes sharing the folder tree away. A run whose folder already holds a complete record is indexed
into the store and skipped. While runs train, a heartbeat thread renews both claims every
:func:`pl_petune.store.heartbeat_s` seconds, so a node that stops beating loses its claims after
:func:`pl_petune.store.stale_after_s` seconds (minutes). On Linux each child gets ``PR_SET_PDEATHSIG``: when
the runner dies, even by ``kill -9``, its children are killed with it, so a rerun never trains a run twice.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pl_petune.sweep import claims
from pl_petune.sweep.command import command_args
from pl_petune.sweep.plan import PlannedRun
from pl_petune.sweep.spec import SweepError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Outcome:
    """What one runner invocation did."""

    complete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    aborted: Optional[str] = None


Launcher = Callable[[list[str], dict[str, str], Path], "subprocess.Popen"]


def _death_signal() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies (Linux), else None.

    SIGKILL, not SIGTERM: a child still checkpointing after its runner died could race the rerun's claim
    of the same run folder; killed at once, it leaves only its last atomic checkpoint for the rerun to resume.
    The libc function is looked up here, in the parent, so the forked child only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(137)
    return preexec


def _popen(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_death_signal())


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


class Runner:
    """Runs planned runs, N at once, each as its own process, claiming each in the store and its folder first.

    Args:
        runs: the planned runs, in launch order.
        store_path: the SQLite results store (this node's index) every run writes to.
        sweep_name: recorded in each claim (``petune runs --sweep``).
        workers: how many runs at once.
        devices: device ids; worker ``i`` pins ``CUDA_VISIBLE_DEVICES`` to ``devices[i % len(devices)]``.
        retries: a run is tried at most ``1 + retries`` times over all invocations (a killed attempt counts).
        log_dir: each run's output goes to ``<log_dir>/<run key>.log`` (appended per attempt).
        progress: show a progress bar over runs.
        launcher: starts one run's process (tests substitute it).
        extra_env: environment added to every run's.

    Raises:
        SweepError: ``workers < 1`` or ``retries < 0``.
    """

    def __init__(self, runs: Sequence[PlannedRun], store_path: str | os.PathLike, sweep_name: str, workers: int = 1,
                 devices: Sequence[str] = (), retries: int = 2, log_dir: Optional[Path] = None,
                 progress: bool = True, launcher: Launcher = _popen, extra_env: Optional[Mapping[str, str]] = None):
        from pl_petune.store import Store, owner_id

        if workers < 1:
            raise SweepError(f"--workers must be >= 1, got {workers}")
        if retries < 0:
            raise SweepError(f"--retries must be >= 0, got {retries}")
        self.runs, self.sweep_name = list(runs), sweep_name
        self.store_path = Path(store_path).resolve()
        self.store = Store(self.store_path)
        self.workers, self.devices, self.retries = workers, list(devices), retries
        self.log_dir = Path(log_dir or self.store_path.parent / "sweeps" / sweep_name / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.progress, self.launcher = progress, launcher
        self.extra_env = dict(extra_env or {})
        self.owner = owner_id()
        self._lock = threading.Lock()
        self._queue = list(self.runs)
        self._active: dict[str, subprocess.Popen] = {}
        self._dirs: dict[str, str] = {}
        self._stop = threading.Event()
        self._beating = threading.Event()
        self._bar: Any = None
        self._done = 0
        self.outcome = Outcome()

    # ---- state ---------------------------------------------------------------------------------------------
    def is_complete(self, run: PlannedRun) -> bool:
        """Complete in this store, or in its run folder (then indexed here, so reports see it)."""
        from pl_petune.index import read_record

        if self.store.status(run.key) == "complete":
            return True
        rec = read_record(run.run_dir) if run.run_dir else None
        if rec is not None and rec.get("status") == "complete" and rec.get("run_key") == run.key:
            try:
                self.store.put(rec)
            except ValueError as err:  # a RecordError: complete all the same, only not indexed here
                self._say(f"petune sweep: run {run.index} [{run.key}] is complete in {run.run_dir} but its record "
                          f"cannot be indexed ({err})")
            return True
        return False

    def run(self) -> Outcome:
        """Run every pending run; returns what happened. Ctrl-C stops the runs and gives their claims back."""
        done_before = sum(1 for r in self.runs if self.store.status(r.key) == "complete")
        if self.progress:
            from tqdm.auto import tqdm

            # disable=None: a bar on a terminal; in a log file, the one line per finished run is enough
            self._bar = tqdm(total=len(self.runs), initial=done_before, desc=self.sweep_name, unit="run",
                             file=sys.stderr, dynamic_ncols=True, disable=None)
        self._done = done_before
        old = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        for signum in old:
            signal.signal(signum, self._interrupt)
        beat = threading.Thread(target=self._heartbeat, daemon=True, name="petune-heartbeat")
        beat.start()
        threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.workers)]
        try:
            for t in threads:
                t.start()
                time.sleep(0.05)  # staggered starts (wandb/wandb#597: simultaneous agents collided)
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        finally:
            self._beating.set()
            for signum, handler in old.items():
                signal.signal(signum, handler)
            if self._bar is not None:
                self._bar.close()
        self.outcome.interrupted = self._stop.is_set() and self.outcome.aborted is None
        return self.outcome

    def _heartbeat(self) -> None:
        from pl_petune.store import heartbeat_s

        while not self._beating.wait(heartbeat_s()):
            with self._lock:
                keys, dirs = list(self._active), dict(self._dirs)
            try:
                self.store.heartbeat(keys, self.owner)
            except Exception as err:  # a busy store must not kill the runner; the next beat retries
                self._say(f"petune sweep: heartbeat failed ({err}); retrying")
            for run_dir in dirs.values():
                claims.beat(run_dir, self.owner)

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():
            for proc in list(self._active.values()):
                proc.kill()
            return
        self._stop.set()
        self._say(f"petune sweep: stopping ({signal.Signals(signum).name}); runs in flight are given back")
        for proc in list(self._active.values()):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _say(self, line: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _next(self) -> Optional[PlannedRun]:
        with self._lock:
            return self._queue.pop(0) if self._queue and not self._stop.is_set() else None

    def _worker(self, slot: int) -> None:
        device = self.devices[slot % len(self.devices)] if self.devices else None
        while True:
            run = self._next()
            if run is None:
                return
            if self.is_complete(run):
                self._skipped(run, "complete")
                continue
            spec = {**run.spec(self.sweep_name), "device": device, "slot": slot}
            if not self.store.claim(run.key, max_attempts=1 + self.retries, spec=spec, owner=self.owner):
                self._skipped(run)
                continue
            holder = claims.acquire(run.run_dir, self.owner) if run.run_dir else None
            if holder is not None:
                self.store.release(run.key)
                self._skipped(run, f"running elsewhere ({holder})")
                continue
            if run.run_dir and self.is_complete(run):  # another node finished it between our check and claim
                claims.release(run.run_dir, self.owner)
                self.store.release(run.key)
                self._skipped(run, "complete")
                continue
            try:
                self._launch(run, device)
            except Exception as err:  # noqa: BLE001 - any fault here is the machine's, not the run's
                self._abort(run, err)
                return
            finally:
                if run.run_dir:
                    claims.release(run.run_dir, self.owner)

    def _abort(self, run: PlannedRun, err: BaseException) -> None:
        """A run could not even be started or accounted (no ``/dev/null``, no process slots, a broken store).

        That is the machine's fault, so the run gets its claim back without spending an attempt, no further run
        starts (they would all fail the same way and burn their retries), and the runs in flight finish.
        """
        reason = f"run {run.index} [{run.key}] could not be started: {type(err).__name__}: {err}"
        try:
            self.store.release(run.key)
        except Exception as again:  # noqa: BLE001 - the store may be what broke; say so, keep the first reason
            reason += f" (and its claim could not be given back: {again})"
        with self._lock:
            if self.outcome.aborted is None:
                self.outcome.aborted = reason
        self._stop.set()
        self._say(f"petune sweep: {reason}; starting no more runs (the runs in flight finish)")

    def _skipped(self, run: PlannedRun, why: Optional[str] = None) -> None:
        if why is None:
            status = self.store.status(run.key)
            if status == "complete":
                why = "complete"
            elif status == "running":
                why = "running elsewhere"
            else:
                row = next((r for r in self.store.rows() if r["run_key"] == run.key), {})
                why = f"{status} after {row.get('attempts')} attempt(s); raise --retries to try again"
        if why not in ("complete", "running elsewhere"):
            self._say(f"petune sweep: run {run.index} [{run.key}] skipped: {why}")
        with self._lock:
            self.outcome.skipped[run.key] = why

    def _launch(self, run: PlannedRun, device: Optional[str]) -> None:
        log = self.log_dir / f"{run.key}.log"
        env = dict(os.environ)
        env.setdefault("WANDB_MODE", "offline")
        # CPU runs share the cores: each gets its share of threads unless the user chose (torch reads it).
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.workers)))
        env.update({"PYTHONUNBUFFERED": "1", "PETUNE_STORE": str(self.store_path), "PETUNE_SWEEP": self.sweep_name,
                    "PETUNE_SWEEP_RUN_KEY": run.key, **self.extra_env})
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        if any(t.endswith(".json") and "run-" in t for t in run.command):
            self._write_json_args(run)
        command = run.command + [f"--run.store={self.store_path}"]
        with open(log, "a") as fh:
            fh.write(f"# petune sweep {self.sweep_name}: run {run.index} [{run.key}], "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {self.owner}, CUDA_VISIBLE_DEVICES={device}\n"
                     f"# {' '.join(command)}\n")
        t0 = time.time()
        proc = self.launcher(command, env, log)
        with self._lock:
            self._active[run.key] = proc
            if run.run_dir:
                self._dirs[run.key] = run.run_dir
        rc = proc.wait()
        with self._lock:
            self._active.pop(run.key, None)
            self._dirs.pop(run.key, None)
        took = time.time() - t0
        if self._stop.is_set() and not self.is_complete(run):
            self.store.release(run.key)
            return
        if rc != 0 and self.store.status(run.key) == "interrupted":
            # the run caught SIGTERM/SIGINT (a preempted node): it is resumable, so it costs no attempt
            self.store.release(run.key)
            with self._lock:
                self.outcome.skipped[run.key] = "interrupted"
            self._say(f"petune sweep: run {run.index} [{run.key}] interrupted (exit code {rc}); it resumes on the "
                      "next sweep of this file")
        elif rc == 0 and self.is_complete(run):
            with self._lock:
                self.outcome.complete.append(run.key)
                self._done += 1
            self._say(f"petune sweep: run {run.index} [{run.key}] {run.task} {run.method} complete ({took:.0f}s); "
                      f"{self._done}/{len(self.runs)} complete")
        else:
            why = f"exit code {rc}" if rc != 0 else "exited 0 without a complete record"
            self.store.mark_failed(run.key, f"{why}; log: {log}; last lines: {_tail(log)}")
            with self._lock:
                self.outcome.failed.append(run.key)
            self._say(f"petune sweep: run {run.index} [{run.key}] FAILED ({why}); log: {log}")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(ok=len(self.outcome.complete), failed=len(self.outcome.failed))

    def _write_json_args(self, run: PlannedRun) -> None:
        from pl_petune.records import atomic_write_text

        for token in run.command:
            if token.endswith(f"run-{run.index:05d}.json"):
                atomic_write_text(token, command_args(run.config)["args_json"][0])


__all__ = ["Runner", "Outcome", "Launcher"]
