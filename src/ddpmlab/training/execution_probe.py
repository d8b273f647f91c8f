"""``train.precision`` / ``channels_last`` / ``compile: auto`` resolved by timing a few real training steps.

Each candidate trains a throwaway copy of the run's network through the real loop (``training.loop.train``:
batch draws, loss, backward, clipping, fused AdamW, EMA) on random images of the run's shape and batch,
so what is timed is what the run will do. The run's random streams are saved before and restored after,
so a probe never changes what the run computes; which candidate wins can (bf16 and fp32 round differently),
and the record in train.json and the MLflow tags says which did.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from ddpmlab.config import TrainConfig
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.host import machine
from ddpmlab.host.choice_cache import ChoiceCache
from ddpmlab.nn import autotune
from ddpmlab.nn.execution import PROBED, Execution, ExecutionRecord, Requested
from ddpmlab.training import rng
from ddpmlab.training.distributed import SINGLE, Distributed, broadcast_object
from ddpmlab.training.loop import TrainingDiverged, TrainState, new_train_state, train

PROBE_IMAGES = 256  # random uint8 images the probe batches are drawn from (content does not change the speed)
PROBE_T = 1000  # timesteps of the probe's process: any T costs the same per step


def training_execution(
    build_model: Callable[[], torch.nn.Module], cfg: TrainConfig, device: torch.device, dist: Distributed = SINGLE, cache: autotune.Cache | None = None
) -> ExecutionRecord:
    """How this run trains: cfg's values where explicit, else the fastest candidate of a timed probe (or this
    machine's choice in ``cache``, by default the user's cache folder). Under DDP every rank probes its own shard
    size at once and rank 0's choice wins."""
    requested = Requested(cfg.precision, cfg.channels_last, cfg.compile)
    saved = rng.capture(device)  # building and training throwaway networks draws random numbers: give them back after
    try:
        sample_model = build_model()
        shard = cfg.batch_size // dist.world_size
        shape = {**autotune.network_shape(sample_model), "batch": shard, "grad_accum": cfg.grad_accum, "learn_variance": cfg.learn_variance}
        timer = _StepTimer(build_model, dataclasses.replace(cfg, batch_size=shard), device, getattr(sample_model, "num_classes", 0))
        del sample_model
        record = autotune.choose("train", requested, device, shape, timer, shard, identity=machine.identity(device),
                                 cache=cache or ChoiceCache(), planned_calls=cfg.steps, announce=None if dist.is_main else lambda _: None)  # fmt: skip
        del timer  # its throwaway train states
    finally:
        rng.restore(saved, device)
    return broadcast_object(record, dist)


class _StepTimer:
    """``autotune.Timer`` over the real loop: one throwaway train state per candidate, built on its first call."""

    def __init__(self, build_model: Callable[[], torch.nn.Module], cfg: TrainConfig, device: torch.device, num_classes: int):
        self.build_model, self.device = build_model, device
        self.cfg = dataclasses.replace(cfg, log_every=10**9, checkpoint_every=10**9)
        self.loss_fn = TrainingLoss(learn_variance=cfg.learn_variance, vlb_weight=cfg.vlb_weight)
        self.process = DiffusionProcess.from_schedule("linear", PROBE_T)
        self.images, self.labels, self.states = None, None, {}
        self.num_classes = num_classes

    def __call__(self, execution: Execution, calls: int) -> float:
        autotune.synchronize(self.device)
        started = time.perf_counter()
        state = self.states.get(execution) or self._new_state(execution)
        cfg = dataclasses.replace(self.cfg, steps=state.step + calls)
        try:
            train(state, self.process, self.images, cfg, loss_fn=self.loss_fn, labels=self.labels)
        except TrainingDiverged:  # random images at the run's lr may diverge: the steps ran all the same, and timing is all we need
            pass
        autotune.synchronize(self.device)
        return time.perf_counter() - started

    def _new_state(self, execution: Execution) -> TrainState:
        record = ExecutionRecord("train", execution, PROBED, {})
        state = new_train_state(self.build_model, self.cfg, 0, self.device, execution=record)
        self.states[execution] = state
        if self.images is None:
            model = state.model
            shape = (PROBE_IMAGES, model.in_channels, model.image_size, model.image_size)
            self.images = torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device)
            if self.num_classes:
                self.labels = torch.randint(0, self.num_classes, (PROBE_IMAGES,), device=self.device)
        return state
