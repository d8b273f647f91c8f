"""Data-parallel training across processes with PyTorch DDP, launched by ``torchrun``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment; without them
everything here is a no-op for a single process, so the one-process path is the same code.
CUDA ranks use NCCL on cuda:LOCAL_RANK; CPU ranks use gloo (how the tests run 2 processes).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes checkpoints, logs, reports and MLflow runs."""
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This rank's contiguous share of a global batch of ``batch_size`` (divisible by world_size)."""
        per_rank = batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


SINGLE = Distributed()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def from_env() -> Distributed:
    if not launched_by_torchrun():
        return SINGLE
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up; returns this rank and its device (cuda:LOCAL_RANK on GPUs)."""
    dist = from_env()
    if not dist.enabled:
        return dist, device
    if device.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"process {dist.rank} needs cuda:{dist.local_rank}, but this machine shows {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise RuntimeError(f"distributed training runs on cuda or cpu, not {device.type}; set device: cuda or cpu")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend)
    return dist, device


def stop(dist: Distributed, wait_for_others: bool = True) -> None:
    """Leave the process group; after a failure, without the barrier (the other ranks may never
    reach it, and torchrun stops them when one rank exits with an error)."""
    if dist.enabled and torch_dist.is_initialized():
        if wait_for_others:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


def relaunch_command(processes: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs this same script in ``processes`` local processes."""
    # "--": the script's own options (e.g. --log) must not be read as abbreviations of torchrun's (--log-dir)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "--", *argv]


def all_reduce_mean_(tensor: torch.Tensor, dist: Distributed) -> torch.Tensor:
    if dist.enabled:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= dist.world_size
    return tensor


def all_reduce_min_(tensor: torch.Tensor, dist: Distributed) -> torch.Tensor:
    if dist.enabled:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MIN)
    return tensor


def broadcast_object(obj: Any, dist: Distributed) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. which checkpoint to resume from, so all ranks agree)."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, dist: Distributed) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a list of one when not distributed)."""
    if not dist.enabled:
        return [obj]
    gathered: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, obj)
    return gathered
