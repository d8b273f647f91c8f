"""A real single-node SLURM cluster for the tests: Debian's slurmctld and slurmd (22.05 here)
with a private munged, every file in one folder, on free ports, found through SLURM_CONF.

As the GUIDE and a trial on these machines found: no systemd is needed (each daemon forks when
ready); the node must be named as `hostname -s` says; RealMemory must stay below what `slurmd -C`
reports or the node drains; without slurmdbd there is no `sacct` (squeue and scontrol remain).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "munged", "mungekey")
PACKAGES = "slurmctld slurmd slurm-client munge"  # what .ci/run installs (Debian's slurm-wlm without its extras)


def installed() -> bool:
    return all(shutil.which(p) or Path("/usr/sbin", p).is_file() for p in PROGRAMS)


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node() -> tuple[str, int, int]:
    """(name, CPUs, RealMemory in MB less 512) as slurmd sees this machine."""
    line = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    return fields["NodeName"], int(fields["CPUs"]), max(int(fields["RealMemory"]) - 512, 512)


@dataclass
class Cluster:
    folder: Path
    node: str
    cpus: int
    memory_mb: int

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client of this cluster sets (sbatch, squeue, ddpmlab's slurm executor)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), capture_output=True, text=True, env={**os.environ, **self.env}, check=check, timeout=60)

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout.strip()

    def wait_idle(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while (state := self.node_state()) != "idle":
            if "drain" in state or state.startswith("down"):
                self.run("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SLURM node is {state!r}, not idle, after {timeout_s:.0f} s; logs in {self.folder / 'log'}")
            time.sleep(0.5)


def start(folder: Path) -> Cluster:
    """Write the config into ``folder`` (every folder above it open to all, as munged wants) and
    start munged, slurmctld and slurmd; wait for the node. On a failure, stop what started."""
    node, cpus, memory = _node()
    for sub in ("state", "spool", "log", "run", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    (folder / "run").chmod(0o755)  # munged wants its socket's folder open to all
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    subprocess.run([_program("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    socket_path = folder / "run" / "munge.socket"
    subprocess.run([_program("munged"), "-S", str(socket_path), f"--key-file={key}", f"--log-file={folder / 'log' / 'munged.log'}",
                    f"--pid-file={folder / 'run' / 'munged.pid'}", f"--seed-file={folder / 'munge' / 'munged.seed'}"],
                   check=True, capture_output=True)  # fmt: skip
    ctld_port, slurmd_port = _free_ports(2)
    user = pwd.getpwuid(os.getuid()).pw_name
    lines = {
        "ClusterName": "ddpmlab-tests", "SlurmctldHost": f"{node}(127.0.0.1)", "SlurmUser": user, "SlurmdUser": user,
        "SlurmctldPort": ctld_port, "SlurmdPort": slurmd_port,
        "AuthType": "auth/munge", "AuthInfo": f"socket={socket_path}", "CredType": "cred/munge",
        "StateSaveLocation": folder / "state", "SlurmdSpoolDir": folder / "spool",
        "SlurmctldPidFile": folder / "run" / "slurmctld.pid", "SlurmdPidFile": folder / "run" / "slurmd.pid",
        "SlurmctldLogFile": folder / "log" / "slurmctld.log", "SlurmdLogFile": folder / "log" / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none", "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core", "SchedulerType": "sched/backfill", "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": folder / "log" / "jobcomp.txt", "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none", "MpiDefault": "none", "MailProg": "/bin/true", "ReturnToService": 2,
        "MinJobAge": 600, "KillWait": 5, "JobRequeue": 1,
        "NodeName": f"{node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
        "PartitionName": "debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    }  # fmt: skip
    (folder / "slurm.conf").write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    cluster = Cluster(folder, node, cpus, memory)
    try:
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_program(daemon)], env={**os.environ, **cluster.env}, check=True, capture_output=True, timeout=60)
        cluster.wait_idle()
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: Cluster) -> None:
    """Cancel every job, shut both daemons down (SIGKILL what is left after 10 s) and stop munged."""
    cluster.run("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, check=False)
    cluster.run("scontrol", "shutdown", check=False)
    for name in ("slurmctld", "slurmd", "munged"):
        pid_file = cluster.folder / "run" / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if name == "munged" and _alive(pid):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
