"""The optimisation loop of DDPM (Algorithm 1) with warmup, clipping and an EMA of the weights.

No paths, no tracking: the caller observes progress and persists state through callbacks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ddpmlab.config import TrainConfig
from ddpmlab.core.diffusion import DiffusionProcess, sample_timesteps
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.data.image_set import to_model_range
from ddpmlab.host import machine
from ddpmlab.model import checkpoint
from ddpmlab.nn import acceleration, autotune
from ddpmlab.nn.execution import RESUMED, Execution, ExecutionRecord, Requested
from ddpmlab.training import rng
from ddpmlab.training.distributed import SINGLE, Distributed, all_reduce_mean_, all_reduce_min_, gather_objects

# Non-finite losses and gradient norms are flagged on the device every step and read back at
# least this often (and before every log record and checkpoint), so a divergence is caught
# within a few steps without a host synchronisation per step.
FINITE_CHECK_EVERY = 10
_NO_BAD_STEP = 2**62


class TrainingDiverged(RuntimeError):
    pass


class EMA:
    """Exponential moving average of a model's parameters: theta_ema <- d theta_ema + (1 - d) theta.

    Sampling with the EMA weights is what the DDPM paper reports (decay 0.9999 over 800k
    steps). The decay warms up as d_n = min(decay, (1 + n) / (10 + n)) after n updates:
    without it a short run's EMA keeps decay^n of the random initialisation (22% after
    1,500 steps at 0.999), which shows up as noise in every sample.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, num_updates: int) -> float:
        return min(self.decay, (1 + num_updates) / (10 + num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, num_updates: int) -> None:
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - self.decay_at(num_updates))


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped."""

    model: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # draws batches, timesteps and noise: its state is the data-order position
    execution: ExecutionRecord  # how the network runs (precision, memory format, compile), `auto` resolved
    step: int = 0
    rng_per_rank: list[dict[str, Any]] | None = None  # every rank's RNG states, gathered by `train` at checkpoints

    def state_dict(self) -> dict[str, Any]:
        rng_states = self.rng_per_rank or [rng.capture(self.generator.device)]
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_states,  # per rank: python, numpy, torch (dropout) and CUDA generators
            "step": self.step,
            # How it runs, for a resume to keep whatever a new probe would say; not how it was chosen, nor the probe's
            # timings: those vary run to run (train.json has them), and the same choice must give the same model.pt.
            "execution": dataclasses.asdict(self.execution.execution),
        }

    def load_state_dict(self, state: dict[str, Any], dist: Distributed = SINGLE) -> None:
        """Load a ``state_dict()``; load it with map_location="cpu" (the optimizer moves its own state)."""
        if "execution" in state:  # checkpoints from before executions were recorded continue in this run's
            self._continue_execution(Execution(**state["execution"]))
        checkpoint.load_weights(self.model, state["model"], "the training state", "model")
        checkpoint.load_weights(self.ema.model, state["ema"], "the training state", "EMA")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        rng_states = state["rng"]
        if len(rng_states) != dist.world_size:
            raise ValueError(f"the training state was saved by {len(rng_states)} processes; this run has {dist.world_size}")
        rng.restore(rng_states[dist.rank], self.generator.device)
        self.step = int(state["step"])

    def _continue_execution(self, saved: Execution) -> None:
        """Go on the way the saved run ran (its memory format before its optimizer state loads), so a resumed run
        is one run, even where the cache was cleared or the machine changed since."""
        if saved == self.execution.execution:
            return
        for model in (self.model, self.ema.model):
            model.to(memory_format=saved.memory_format)
        self.execution = ExecutionRecord("train", saved, RESUMED, self.execution.machine)


def new_train_state(
    build_model: Callable[[], torch.nn.Module], cfg: TrainConfig, seed: int, device: torch.device, dist: Distributed = SINGLE,
    execution: ExecutionRecord | None = None,
) -> TrainState:
    """Seed, build the model, and set up AdamW with linear warmup to ``cfg.lr`` then a
    constant rate (DDPM, appendix B). The model is built here, after seeding, so its
    initial weights are a function of ``seed`` alone. Weights and optimizer state are fp32
    whatever ``cfg.precision`` is (bf16 autocast keeps fp32 master weights).

    ``execution``: how the network runs; None takes cfg's precision, channels_last and compile as given, so an
    ``auto`` among them must have been timed first (``training.execution_probe.training_execution``).

    Under DDP every rank builds the same weights and the same batch generator (they draw the
    same global batch and each trains on its shard); ranks other than 0 then reseed the
    global generator so their dropout masks differ, while rank 0 draws as a single process."""
    if execution is None:
        execution = autotune.explicit_record("train", Requested(cfg.precision, cfg.channels_last, cfg.compile), device, machine.identity(device))
    rng.seed_everything(seed)
    # channels_last: same math, several times faster convolutions with oneDNN (CPU) and cuDNN tensor cores.
    model = build_model().to(device, memory_format=execution.execution.memory_format)
    optimizer = acceleration.adamw(model.parameters(), device, cfg.lr, cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    generator = torch.Generator(device=device).manual_seed(seed)
    if dist.rank > 0:
        rng.seed_everything(seed + 1_000_003 * dist.rank)
    return TrainState(model, EMA(model, cfg.ema_decay), optimizer, scheduler, generator, execution)


@dataclass
class LogRecord:
    step: int
    loss: float  # mean training loss (L_simple for eps / mse) over the steps since the last record
    lr: float
    images_per_s: float


def train(
    state: TrainState,
    process: DiffusionProcess,
    images: torch.Tensor,
    cfg: TrainConfig,
    *,
    loss_fn: TrainingLoss | None = None,
    hflip: bool = False,
    labels: torch.Tensor | None = None,
    dist: Distributed = SINGLE,
    on_step: Callable[[int], None] | None = None,
    on_log: Callable[[LogRecord], None] | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Run from ``state.step`` to ``cfg.steps``.

    images: (N, C, H, W) uint8 on the training device; batches are drawn uniformly with
    replacement and scaled / flipped on the device. ``hflip`` mirrors a random half of each
    batch (DDPM's CIFAR-10 augmentation); its coin flips come from the same generator, drawn
    only when enabled, so runs without it are unchanged. The loss is read back every
    ``cfg.log_every`` steps only, so the device never waits on the host in between.

    Speed options (``acceleration``): ``state.execution`` (bf16 autocast, memory format, compile; cfg's
    precision, channels_last and compile were resolved into it by ``new_train_state``), and
    ``cfg.grad_accum`` micro-batches. The whole batch's indices, t and noise are drawn before
    it is split, so accumulation changes memory, not which samples a step sees.

    labels: (N,) int64 class labels on the device, for a conditional network (``model.conditional``):
    each step's labels are replaced by the network's null label with probability
    ``cfg.p_uncond`` (coin flips from the same generator, drawn after the noise and only for
    conditional training), so one network learns eps(x, t, y) and eps(x, t) for
    classifier-free guidance (Ho & Salimans 2022, Algorithm 1).

    Under DDP (``dist``) every rank draws the same global batch and trains on its shard of
    batch_size / world_size images; gradients are averaged across ranks, so a step is the
    single-process step up to summation order. Every rank must call this; ``on_checkpoint``
    runs on the main rank only, with every rank's RNG states gathered into ``state``.

    Raises TrainingDiverged, naming the first step with a non-finite loss or gradient norm,
    before any checkpoint or log record of the diverged weights.
    """
    device = images.device
    loss_fn = loss_fn or TrainingLoss()
    model = state.model.train()
    if cfg.batch_size % (dist.world_size * cfg.grad_accum):
        raise ValueError(
            f"train.batch_size = {cfg.batch_size} must be divisible by processes x train.grad_accum = {dist.world_size} x {cfg.grad_accum}"
        )
    execution = state.execution.execution
    dtype = execution.dtype
    acceleration.configure_backends(device, cfg.tf32)
    network = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if dist.enabled else model
    forward = acceleration.maybe_compile(network, execution.compile)
    memory_format = execution.memory_format
    shard = dist.shard(cfg.batch_size)
    micro_batch = (shard.stop - shard.start) // cfg.grad_accum
    first_bad_step = torch.full((), _NO_BAD_STEP, dtype=torch.long, device=device)
    window_loss = torch.zeros((), device=device)
    window_start, window_steps = time.perf_counter(), 0
    while state.step < cfg.steps:
        x0, t, noise, y = _draw_batch(state, process, images, labels, cfg, hflip, shard, memory_format)
        state.optimizer.zero_grad(set_to_none=True)
        loss = _accumulate_gradients(network, forward, loss_fn, process, (x0, t, noise, y), cfg, micro_batch, dist, dtype)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        first_bad_step = torch.minimum(first_bad_step, torch.where(finite, _NO_BAD_STEP, state.step + 1))
        state.optimizer.step()
        state.scheduler.step()
        state.ema.update(model, state.step)
        state.step += 1
        window_loss += loss
        window_steps += 1
        if on_step is not None:
            on_step(state.step)
        log_due = state.step % cfg.log_every == 0 or state.step == cfg.steps
        checkpoint_due = state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps
        if log_due or checkpoint_due or state.step % FINITE_CHECK_EVERY == 0:
            _stop_if_diverged(first_bad_step, state.step, dist)
        if log_due:
            mean_loss = float(all_reduce_mean_(window_loss, dist)) / window_steps
            elapsed = time.perf_counter() - window_start
            if on_log is not None:
                lr = state.optimizer.param_groups[0]["lr"]
                on_log(LogRecord(state.step, mean_loss, lr, window_steps * cfg.batch_size / elapsed))
            window_loss.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if checkpoint_due:
            state.rng_per_rank = gather_objects(rng.capture(device), dist)
            _check_ema_in_sync(state, dist)
            if dist.is_main and on_checkpoint is not None:
                on_checkpoint(state)
            state.rng_per_rank = None
    return state


def _draw_batch(
    state: TrainState, process: DiffusionProcess, images: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig, hflip: bool,
    shard: slice, memory_format: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """This rank's shard of one global batch: (x_0 (B, C, H, W) in [-1, 1], t (B,), eps (B, C, H, W), labels (B,) or None).

    Every rank draws the whole batch from the same generator, so the draw order (indices, flips, t,
    noise, label dropout) is part of the seed's meaning: keep it."""
    device = images.device
    idx = torch.randint(0, images.shape[0], (cfg.batch_size,), device=device, generator=state.generator)
    flip = torch.rand(cfg.batch_size, device=device, generator=state.generator) < 0.5 if hflip else None
    t = sample_timesteps(cfg.batch_size, process.T, device, state.generator)
    noise = torch.randn((cfg.batch_size, *images.shape[1:]), device=device, generator=state.generator)
    y = None
    if labels is not None:
        dropped = torch.rand(cfg.batch_size, device=device, generator=state.generator) < cfg.p_uncond
        y = torch.where(dropped, state.model.null_label, labels[idx])[shard]
    idx, t, noise = idx[shard], t[shard], noise[shard]
    x0 = to_model_range(images[idx])
    if flip is not None:
        x0 = torch.where(flip[shard, None, None, None], x0.flip(-1), x0)
    return x0.contiguous(memory_format=memory_format), t, noise, y


def _accumulate_gradients(
    network: torch.nn.Module, forward: Callable, loss_fn: TrainingLoss, process: DiffusionProcess,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], cfg: TrainConfig, micro_batch: int,
    dist: Distributed, dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """Backpropagate the batch's loss in cfg.grad_accum micro-batches; returns the (detached) batch loss."""
    x0, t, noise, y = batch
    loss = torch.zeros((), device=x0.device)
    for part in range(cfg.grad_accum):
        chunk = slice(part * micro_batch, (part + 1) * micro_batch)
        last = part == cfg.grad_accum - 1
        with network.no_sync() if dist.enabled and not last else contextlib.nullcontext():  # one all-reduce per step
            with acceleration.autocast(x0.device, dtype):
                network_fn = forward if y is None else functools.partial(forward, y=y[chunk])
                micro_loss = loss_fn(network_fn, process, x0[chunk], t[chunk], noise[chunk]) / cfg.grad_accum
            micro_loss.backward()
        loss += micro_loss.detach()
    return loss


def _stop_if_diverged(first_bad_step: torch.Tensor, step: int, dist: Distributed) -> None:
    bad = int(all_reduce_min_(first_bad_step.clone(), dist))
    if bad != _NO_BAD_STEP:
        raise TrainingDiverged(
            f"training diverged: non-finite loss or gradient norm at step {bad} (caught at step {step}); "
            "nothing after it was saved, so the last checkpoint is intact. Lower train.lr or check the data."
        )


def _check_ema_in_sync(state: TrainState, dist: Distributed) -> None:
    """DDP keeps weights identical across ranks, and so the EMA; a cheap checksum proves it at every checkpoint."""
    if not dist.enabled:
        return
    checksum = float(sum(p.double().sum() for p in state.ema.model.parameters()))
    sums = gather_objects(checksum, dist)
    if len(set(sums)) != 1:
        raise RuntimeError(f"EMA weights differ across ranks at step {state.step}: checksums {sums}")
