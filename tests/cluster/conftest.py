"""A real one-host SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm.

The fixture writes a private slurm.conf (free ports, state under a temporary folder, no accounting, no
cgroups), starts the three daemons as root and waits for the node to be idle. Where that cannot happen (no
slurm-wlm installed, not root, a daemon that does not come up), the tests are skipped with the reason and
the daemons' last log lines. Install: ``apt-get install -y slurm-wlm munge`` (see .ci/run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def _conf(d: Path, node: str, cpus: int) -> str:
    return "\n".join([
        "ClusterName=petunetest", "SlurmctldHost=localhost(127.0.0.1)",
        "AuthType=auth/munge", f"AuthInfo=socket={d}/munge/munge.sock", "CredType=cred/munge",
        "SlurmUser=root", "SlurmdUser=root", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool", f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmdPidFile={d}/slurmd.pid", f"SlurmctldLogFile={d}/log/slurmctld.log",
        f"SlurmdLogFile={d}/log/slurmd.log", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "KillWait=5",
        "MinJobAge=600",
        f"NodeName={node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 "
        "State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP", ""])


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Start the cluster; yields its folder. ``SLURM_CONF`` points every SLURM command at it meanwhile."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the one-host SLURM fixture starts slurmd as root (SlurmdUser=root); run the tests as root")
    d = Path(tmp_path_factory.mktemp("slurm"))
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o755)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = "petune-node"
    (d / "slurm.conf").write_text(_conf(d, node, cpus=max(2, os.cpu_count() or 2)))
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(d / "slurm.conf")
    started = []
    try:
        for argv, pidfile in (
                (["munged", "--force", f"--socket={d}/munge/munge.sock", f"--key-file={key}",
                  f"--log-file={d}/log/munged.log", f"--pid-file={d}/munge/munged.pid",
                  f"--seed-file={d}/munge/seed"], d / "munge" / "munged.pid"),
                (["slurmctld", "-c"], d / "slurmctld.pid"),
                (["slurmd", "-N", node], d / "slurmd.pid")):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                pytest.skip(f"SLURM fixture: {argv[0]} did not start (exit {res.returncode}: "
                            f"{' '.join((res.stderr or res.stdout).split())[:300]})")
            started.append(pidfile)
            time.sleep(0.5)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
            state = res.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"SLURM fixture: node never became idle (state {state!r}); slurmctld: "
                        f"{_tail(d / 'log' / 'slurmctld.log')}; slurmd: {_tail(d / 'log' / 'slurmd.log')}")
        yield d
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, timeout=30)
        for pidfile in reversed(started):
            try:
                os.kill(int(pidfile.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        time.sleep(1)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
