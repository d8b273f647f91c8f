"""The optimisation loop of DDPM (Algorithm 1) with warmup, clipping and an EMA of the weights.

No paths, no tracking: the caller observes progress and persists state through callbacks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ddpmlab import acceleration
from ddpmlab.config import TrainConfig
from ddpmlab.data import to_model_range
from ddpmlab.diffusion import DiffusionProcess, sample_timesteps
from ddpmlab.losses import TrainingLoss


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
    generator: torch.Generator  # draws batches, timesteps and noise
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),  # dropout draws from the global generator
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])


def new_train_state(build_model: Callable[[], torch.nn.Module], cfg: TrainConfig, seed: int, device: torch.device) -> TrainState:
    """Seed, build the model, and set up AdamW with linear warmup to ``cfg.lr`` then a
    constant rate (DDPM, appendix B). The model is built here, after seeding, so its
    initial weights are a function of ``seed`` alone. Weights and optimizer state are fp32
    whatever ``cfg.precision`` is (bf16 autocast keeps fp32 master weights)."""
    torch.manual_seed(seed)
    # channels_last: same math, several times faster convolutions with oneDNN (CPU) and cuDNN tensor cores.
    model = build_model().to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = acceleration.adamw(model.parameters(), device, cfg.lr, cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    generator = torch.Generator(device=device).manual_seed(seed)
    return TrainState(model, EMA(model, cfg.ema_decay), optimizer, scheduler, generator)


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

    Speed options (``acceleration``): ``cfg.precision`` autocast, ``cfg.compile``, and
    ``cfg.grad_accum`` micro-batches of batch_size / grad_accum images. The whole batch's
    indices, t and noise are drawn before it is split, so accumulation changes memory, not
    which samples a step sees.
    """
    device = images.device
    loss_fn = loss_fn or TrainingLoss()
    model = state.model.train()
    dtype = acceleration.resolve_precision(cfg.precision, device)
    acceleration.configure_backends(device, cfg.tf32)
    forward = acceleration.maybe_compile(model, cfg.compile)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    micro_batch = cfg.batch_size // cfg.grad_accum
    window_loss = torch.zeros((), device=device)
    window_start, window_steps = time.perf_counter(), 0
    while state.step < cfg.steps:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), device=device, generator=state.generator)
        x0 = to_model_range(images[idx])
        if hflip:
            flip = torch.rand(cfg.batch_size, device=device, generator=state.generator) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        x0 = x0.contiguous(memory_format=memory_format)
        t = sample_timesteps(cfg.batch_size, process.T, device, state.generator)
        noise = torch.randn(x0.shape, device=device, generator=state.generator)
        state.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for part in range(cfg.grad_accum):
            chunk = slice(part * micro_batch, (part + 1) * micro_batch)
            with acceleration.autocast(device, dtype):
                micro_loss = loss_fn(forward, process, x0[chunk], t[chunk], noise[chunk]) / cfg.grad_accum
            micro_loss.backward()
            loss += micro_loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        state.ema.update(model, state.step)
        state.step += 1
        window_loss += loss
        window_steps += 1
        if on_step is not None:
            on_step(state.step)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            mean_loss = float(window_loss) / window_steps
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(f"loss became {mean_loss} between steps {state.step - window_steps + 1} and {state.step}")
            elapsed = time.perf_counter() - window_start
            if on_log is not None:
                lr = state.optimizer.param_groups[0]["lr"]
                on_log(LogRecord(state.step, mean_loss, lr, window_steps * cfg.batch_size / elapsed))
            window_loss.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if on_checkpoint is not None and state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
            on_checkpoint(state)
    return state
