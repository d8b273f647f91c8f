"""What machine a run executes on, as the execution cache keys it and run records show it."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

import torch


@cache
def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) Platinum 8488C'), else the architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor() or platform.machine())


def processor(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def identity(device: torch.device) -> dict[str, Any]:
    """device, processor, cores (the machine's), threads (torch's intra-op pool: what the run may use), torch version."""
    return {
        "device": device.type,
        "processor": processor(device),
        "cores": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),  # a str subclass that a weights-only checkpoint load refuses
    }
