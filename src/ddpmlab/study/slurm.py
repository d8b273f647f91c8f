"""What a SLURM cluster offers, read from the scheduler itself (`sinfo`, `scontrol`), so that a
study asking for a partition it lacks or more than a node holds is refused before anything is
submitted. Through the command-line tools rather than a library: they are what every cluster has,
and what its admins document.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from ddpmlab.study.spec import Resources, StudyError

TIMEOUT_S = 60


@dataclass(frozen=True)
class Partition:
    """One partition: its name, whether it is the default, and its largest node."""

    name: str
    default: bool
    cpus: int
    memory_mb: int
    gpus: int


def _run(*command: str) -> str:
    if shutil.which(command[0]) is None:
        raise StudyError(f"`{command[0]}` is missing: the slurm executor needs SLURM's client tools (Debian: slurm-client)")
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=TIMEOUT_S, env=dict(os.environ), check=False)
    except subprocess.TimeoutExpired:
        raise StudyError(f"`{' '.join(command)}` got no answer from the scheduler within {TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise StudyError(f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return done.stdout


def _gpus(gres: str) -> int:
    """GPUs in a node's Gres string ("gpu:a100:4(S:0-1),shard:8" -> 4; "(null)" -> 0)."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partitions() -> dict[str, Partition]:
    """Every partition the scheduler has, with its largest node's CPUs, memory and GPUs."""
    out = _run("sinfo", "--noheader", "--Node", "--format", "%P|%c|%m|%G")
    found: dict[str, Partition] = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        name, cpus, memory, gres = line.split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        memory_mb = int("".join(ch for ch in memory if ch.isdigit()) or 0)
        old = found.get(name)
        node = Partition(name, default, int(cpus.rstrip("+")), memory_mb, _gpus(gres))
        if old is None or (node.cpus, node.memory_mb, node.gpus) > (old.cpus, old.memory_mb, old.gpus):
            found[name] = node
    return found


def check(resources: Resources) -> Partition:
    """The partition a task with ``resources`` goes to; StudyError when the cluster has no such
    partition or no node there that holds one task."""
    found = partitions()
    if not found:
        raise StudyError("the SLURM cluster reports no partitions (sinfo printed none)")
    if resources.partition is None:
        defaults = [p for p in found.values() if p.default]
        if not defaults:
            raise StudyError(f"the cluster has no default partition: name one in resources.partition ({', '.join(found)})")
        partition = defaults[0]
    elif resources.partition not in found:
        raise StudyError(f"resources.partition = {resources.partition!r}: the cluster has {', '.join(sorted(found))}")
    else:
        partition = found[resources.partition]
    too_much = [
        f"{what} = {asked} (its largest node has {has})"
        for what, asked, has in (("cpus", resources.cpus, partition.cpus), ("gpus", resources.gpus, partition.gpus),
                                 ("memory_gb", resources.memory_gb, round(partition.memory_mb / 1024, 1)))
        if asked > has
    ]  # fmt: skip
    if too_much:
        raise StudyError(f"partition {partition.name!r} cannot hold one task: resources.{'; resources.'.join(too_much)}")
    return partition
