"""``auto`` by measurement: time each allowed execution on the real network, batch and device, keep the fastest.

A probe costs seconds, so its choice is kept in a cache the caller passes (``host.choice_cache``: the
user's cache folder), keyed by the task, the machine (device, CPU or GPU model, cores, threads, torch
version) and the network's shape; later runs on the same kind of machine skip the probe. The choice
is recorded with each run (``nn.execution.ExecutionRecord``), never a DVC param.

A compiled candidate is timed only when the run is long enough to repay compiling
(``COMPILE_WORTH_S`` of projected work with the eager winner): the eager winner, compiled once.
The choice then minimises the projected run time including each candidate's first call, so a
compile that cannot pay for itself loses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ddpmlab.nn.execution import CACHED, EXPLICIT, PROBED, Execution, ExecutionRecord, Requested
from ddpmlab.nn.hardware_names import AUTO


class Cache(Protocol):
    """Where choices are kept between runs (``host.choice_cache.ChoiceCache``)."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, entry: dict[str, Any]) -> None: ...


# A timer runs `calls` network calls (training steps, or sampling forwards) in one execution and returns
# the seconds they took, synchronised with the device; it raises if the execution cannot run here.
Timer = Callable[[Execution, int], float]

ROUNDS = 3  # timed rounds, candidates interleaved in each so drift of a shared host hits all alike; the median counts
MAX_PROBE_S = 8.0  # timed rounds' budget at most (the two warm-up calls per candidate come on top) ...
MIN_PROBE_S = 0.5  # ... and at least
PROBE_FRACTION = 0.02  # ... else this share of the projected run
COMPILE_WORTH_S = 1200.0  # projected eager seconds from which compiled candidates are worth timing
_ANNOUNCED: set[str] = set()  # cache keys whose choice this process has printed


def cache_key(task: str, identity: dict[str, Any], shape: dict[str, Any], requested: Requested) -> str:
    """16 hex digits of SHA-256 over the task, the machine identity, the network shape and the request."""
    blob = json.dumps({"task": task, "machine": identity, "shape": shape, "requested": dataclasses.asdict(requested)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def choose(
    task: str, requested: Requested, device: torch.device, shape: dict[str, Any], timer: Timer, images_per_call: int, *,
    identity: dict[str, Any], cache: Cache, planned_calls: int | None = None, announce: Callable[[str], None] | None = None,
) -> ExecutionRecord:  # fmt: skip
    """The execution for ``task`` ("train" | "sample") on the machine ``identity`` (``host.machine.identity``): the
    request itself when it names every field, else ``cache``'s choice for this machine and ``shape``, else the
    probe's (then cached). ``planned_calls``: how many calls the run will make (None: unknown; compile is then
    never tried). ``announce`` gets the one-line decision (default: stderr)."""
    if requested.is_explicit:
        return explicit_record(task, requested, device, identity)
    announce = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    key = cache_key(task, identity, shape, requested)
    cached = cache.get(key)
    if cached is not None:
        try:
            record = ExecutionRecord(task, Execution(**cached["execution"]), CACHED, identity, dict(cached["rates"]))
        except (KeyError, TypeError, ValueError) as error:
            warn(f"ignoring a malformed entry of the execution cache ({error!r}); probing again")
        else:
            if key not in _ANNOUNCED:  # a stage reusing one network shape (FID snapshots) says it once
                announce(record.message())
                _ANNOUNCED.add(key)
            return record
    started = time.perf_counter()
    execution, rates = probe(requested, device, timer, images_per_call, planned_calls)
    record = ExecutionRecord(task, execution, PROBED, identity, rates, time.perf_counter() - started)
    cache.put(key, {"execution": dataclasses.asdict(execution), "rates": rates, "shape": shape, "machine": identity,
                    "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    announce(record.message())
    _ANNOUNCED.add(key)
    return record


def explicit_record(task: str, requested: Requested, device: torch.device, identity: dict[str, Any]) -> ExecutionRecord:
    """The record of a request that names every field: nothing to time."""
    if not requested.is_explicit:
        raise ValueError(f"{task}: precision / channels_last / compile = auto must be timed first (nn.autotune.choose)")
    (execution,) = requested.candidates(device, consider_compile=False)  # also refuses bf16 where autocast cannot run it
    return ExecutionRecord(task, execution, EXPLICIT, identity)


def probe(
    requested: Requested, device: torch.device, timer: Timer, images_per_call: int, planned_calls: int | None
) -> tuple[Execution, dict[str, float]]:
    """(the fastest execution, images/s per candidate label). Each candidate gets two warm-up calls (the first
    pays for compiling, weight casts, kernel selection; the second estimates a call), then ``ROUNDS`` interleaved
    timed rounds; a candidate whose timer raises is left out with a warning. With ``compile: auto`` and a run long
    enough to repay it, the eager winner is then compiled and timed too (one compile, not one per candidate)."""
    first_s, per_call = _warm_up(requested.candidates(device, consider_compile=False), timer)
    budget = PROBE_FRACTION * _projected(per_call, planned_calls) if planned_calls else MAX_PROBE_S
    budget = min(MAX_PROBE_S, max(MIN_PROBE_S, budget))
    speed = _timed_rounds(per_call, timer, budget)
    best = _best(speed, first_s, planned_calls)
    if planned_calls and requested.compile == AUTO and planned_calls / speed[best] >= COMPILE_WORTH_S:
        compiled = dataclasses.replace(best, compile=True)
        more_first, more_per_call = _warm_up([compiled], timer, required=False)
        if more_per_call:
            first_s.update(more_first)
            speed.update(_timed_rounds(more_per_call, timer, budget / len(per_call)))
            best = _best(speed, first_s, planned_calls)
    return best, {c.label: round(s * images_per_call, 1) for c, s in speed.items()}


def _timed_rounds(per_call: dict[Execution, float], timer: Timer, budget: float) -> dict[Execution, float]:
    """Calls per second of each candidate: the median of ``ROUNDS`` interleaved rounds sized to ``budget`` seconds."""
    calls = max(1, int(budget / (ROUNDS * sum(per_call.values()))))
    samples: dict[Execution, list[float]] = {c: [] for c in per_call}
    for _ in range(ROUNDS):
        for candidate, rates in samples.items():
            rates.append(calls / timer(candidate, calls))
    return {c: statistics.median(s) for c, s in samples.items()}


def _best(speed: dict[Execution, float], first_s: dict[Execution, float], planned_calls: int | None) -> Execution:
    """The shortest projected run (the first call's one-off cost, then the measured rate), or the fastest if the length is unknown."""
    if planned_calls:
        return min(speed, key=lambda c: first_s[c] + planned_calls / speed[c])
    return max(speed, key=speed.get)


def _warm_up(candidates: list[Execution], timer: Timer, required: bool = True) -> tuple[dict[Execution, float], dict[Execution, float]]:
    """(first call seconds, second call seconds) per candidate that runs; raise if none of ``required`` ones does."""
    first_s, per_call = {}, {}
    for candidate in candidates:
        try:
            first_s[candidate] = timer(candidate, 1)
            per_call[candidate] = max(timer(candidate, 1), 1e-6)
        except Exception as error:  # noqa: BLE001  a candidate this machine cannot run (no compiler, no bf16 kernels) is not chosen
            warn(f"auto: {candidate.label} could not run here ({type(error).__name__}: {error}); not a candidate")
    if required and not per_call:
        raise RuntimeError(f"auto: none of {', '.join(c.label for c in candidates)} ran on this machine; set the precision explicitly")
    return first_s, per_call


def _projected(per_call: dict[Execution, float], planned_calls: int) -> float:
    """The run's projected seconds with the fastest candidate so far: the work at stake."""
    return min(per_call.values()) * planned_calls


def planned_calls(images: int, batch_size: int, calls_per_batch: int) -> int:
    """Network calls of drawing ``images`` in batches of ``batch_size`` with ``calls_per_batch`` calls each (the NFE)."""
    return -(-images // batch_size) * calls_per_batch


def network_shape(model: torch.nn.Module) -> dict[str, Any]:
    """What about a network sets its speed: its class, config, channels in and out, image size, classes, parameters."""
    return {
        "network": type(model).__name__,
        "config": repr(getattr(model, "config", None)),
        "in_channels": getattr(model, "in_channels", None),
        "out_channels": getattr(model, "out_channels", None),
        "image_size": getattr(model, "image_size", None),
        "num_classes": getattr(model, "num_classes", 0),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
