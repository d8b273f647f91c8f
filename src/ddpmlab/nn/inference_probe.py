"""``sample.precision`` / ``channels_last`` / ``compile: auto`` resolved by timing the sampling network itself.

Each candidate is an ``InferenceNetwork`` over a copy of the weights, called on random inputs of the
run's batch (x_t, timesteps, and labels for a conditional network). The winner is returned as built,
so its weights are cast (and compiled) once.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ddpmlab.nn import autotune
from ddpmlab.nn.acceleration import InferenceNetwork
from ddpmlab.nn.execution import Execution, Requested

PROBE_T = 1000  # timestep range of the probe's inputs: the embedding costs the same for any t


def inference_network(
    model: nn.Module, device: torch.device, requested: Requested, batch_size: int, planned_calls: int | None = None, *,
    identity: dict[str, Any], cache: autotune.Cache, announce: Callable[[str], None] | None = None,
) -> InferenceNetwork:  # fmt: skip
    """The sampling network of ``model`` as ``requested`` (``auto`` fields measured on a batch of ``batch_size``, or
    ``cache``'s earlier choice on the machine ``identity``), with its ``execution_record``. ``planned_calls``: network
    calls the caller will make (compile is tried only for long runs, ``nn.autotune``)."""
    built: dict[Execution, InferenceNetwork] = {}
    x = torch.randn(batch_size, model.in_channels, model.image_size, model.image_size, device=device)
    t = torch.randint(0, PROBE_T, (batch_size,), device=device)
    y = torch.randint(0, model.num_classes, (batch_size,), device=device) if getattr(model, "num_classes", 0) else None

    def timer(execution: Execution, calls: int) -> float:
        autotune.synchronize(device)
        started = time.perf_counter()
        network = built.get(execution) or built.setdefault(execution, _build(copy.deepcopy(model), device, execution))
        with torch.inference_mode():
            for _ in range(calls):
                network(x, t, y)
        autotune.synchronize(device)
        return time.perf_counter() - started

    shape = {**autotune.network_shape(model), "batch": batch_size}
    record = autotune.choose("sample", requested, device, shape, timer, batch_size, identity=identity, cache=cache,
                             planned_calls=planned_calls, announce=announce)  # fmt: skip
    network = built.pop(record.execution, None) or _build(model, device, record.execution)  # the probe's winner, as built
    built.clear()  # the losers' weight copies
    network.execution_record = record
    return network


def _build(model: nn.Module, device: torch.device, execution: Execution) -> InferenceNetwork:
    return InferenceNetwork(model, device, execution.dtype, execution.channels_last, execution.compile)
