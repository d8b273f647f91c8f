"""Noise schedules: beta_t for t = 1..T, as float64 tensors of shape (T,).

A named schedule is a pure function of T and never changes once released: experiments
compared across versions must mean the same thing. Golden values live in the tests.

Index convention used throughout ddpmlab: array index i holds paper timestep t = i + 1,
so ``betas[0]`` is beta_1 and ``alpha_bars[T - 1]`` is alpha-bar_T.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# DDPM (Ho et al. 2020, sec. 4): beta rises linearly from 1e-4 to 0.02 over T = 1000 steps.
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
# Improved DDPM (Nichol & Dhariwal 2021, eq. 17): offset s and the clip on beta.
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def _ramp(start: float, end: float, T: int) -> torch.Tensor:
    """start..end in T even steps; T = 1 keeps the end, so a one-step process still ends in noise."""
    if T == 1:
        return torch.tensor([end], dtype=torch.float64)
    return torch.linspace(start, end, T, dtype=torch.float64)


def _rescale(betas_at_T1000: torch.Tensor) -> torch.Tensor:
    """Scale by 1000 / T, which keeps sum(beta) and so alpha-bar_T about where T = 1000 puts it.
    The clip at MAX_BETA only acts for T <= 20, where the scaled values would pass 1."""
    return (1000.0 / len(betas_at_T1000) * betas_at_T1000).clamp(max=MAX_BETA)


def linear_betas(T: int) -> torch.Tensor:
    """Ho et al.'s linear schedule, rescaled so any T ends as close to pure noise as T = 1000.

    Multiplying both endpoints by 1000 / T keeps sum(beta) (and so alpha-bar_T) roughly
    constant; this is the rescaling Improved DDPM uses for its T ablations.
    """
    return _rescale(_ramp(LINEAR_BETA_START, LINEAR_BETA_END, T))


def cosine_alpha_bar(t_over_T: torch.Tensor) -> torch.Tensor:
    """f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) (Improved DDPM eq. 17)."""

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    return f(t_over_T) / f(torch.zeros((), dtype=t_over_T.dtype))


def cosine_betas(T: int) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: beta_t = 1 - abar(t) / abar(t-1), clipped at 0.999."""
    grid = torch.arange(T + 1, dtype=torch.float64) / T
    abar = cosine_alpha_bar(grid)
    return (1 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)


def quadratic_betas(T: int) -> torch.Tensor:
    """The DDPM reference code's "quad" schedule: sqrt(beta) linear from sqrt(1e-4) to
    sqrt(0.02), rescaled by 1000 / T like ``linear``. Spends more steps at low noise."""
    return _rescale(_ramp(math.sqrt(LINEAR_BETA_START), math.sqrt(LINEAR_BETA_END), T) ** 2)


# Sigmoid schedule (Jabri, Fleet & Chen 2022; Chen 2023, "On the Importance of Noise Scheduling"):
# alpha-bar(t) follows a reversed, normalised sigmoid between these endpoints.
SIGMOID_START, SIGMOID_END, SIGMOID_TAU = -3.0, 3.0, 1.0


def sigmoid_alpha_bar(t_over_T: torch.Tensor) -> torch.Tensor:
    """(sigmoid(end/tau) - sigmoid((t/T (end - start) + start)/tau)) / (sigmoid(end/tau) - sigmoid(start/tau))."""
    v_start = torch.sigmoid(torch.tensor(SIGMOID_START / SIGMOID_TAU, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(SIGMOID_END / SIGMOID_TAU, dtype=torch.float64))
    v = torch.sigmoid((t_over_T * (SIGMOID_END - SIGMOID_START) + SIGMOID_START) / SIGMOID_TAU)
    return (v_end - v) / (v_end - v_start)


def sigmoid_betas(T: int) -> torch.Tensor:
    """beta_t = 1 - abar(t) / abar(t-1) of ``sigmoid_alpha_bar``, clipped at 0.999 like cosine."""
    abar = sigmoid_alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T)
    return (1 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)


SCHEDULE_FUNCTIONS: dict[str, Callable[[int], torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


def make_betas(name: str, T: int) -> torch.Tensor:
    """beta_1..beta_T of the named schedule, float64, shape (T,)."""
    if name not in SCHEDULE_FUNCTIONS:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(sorted(SCHEDULE_FUNCTIONS))}")
    if T < 1:
        raise ValueError(f"T must be a positive integer, got {T}")
    betas = SCHEDULE_FUNCTIONS[name](T)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"schedule {name!r} with T={T} gives betas outside (0, 1) "
            f"(max {betas.max().item():.4g}); use a larger T"
        )
    return betas
