"""Step grids: which of the model's T timesteps a sampler visits (``sample.spacing``).

A grid is a strictly increasing list of N 0-based timestep indices k_1 < ... < k_N out of
0..T-1 (index k is the paper's t = k + 1). A sampler starts from x ~ N(0, I) at k_N, takes one
step to each lower index, and a last step from k_1 to clean data (alpha-bar = 1, sigma = 0).
Grids only choose timesteps; any sampler runs on any grid (``DiffusionProcess.respaced``).

Grids defined in continuous noise level (``logsnr``, ``karras``) are mapped back to the
network's integer timesteps by **rounding to the nearest timestep in log-SNR** (equivalently in
log sigma), never by interpolation: the network is only ever asked about timesteps it was
trained on, and the sampler uses that timestep's exact alpha-bar. Where rounding (or a floor)
merges neighbours, each merged index is pushed one step up (then, if it passes T - 1, down):
a grid of N steps always has N distinct timesteps, N <= T. One step is k = T - 1 for every spacing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5: rho = 7 spends more steps at low noise
QUADRATIC_TOP = 0.8  # DDIM's CIFAR-10 quadratic grid ends at t = 0.8 T (Song et al. 2021, appendix D.2)


def half_log_snr(alpha_bars: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(abar / (1 - abar)), decreasing in t (Lu et al. 2022)."""
    return 0.5 * (alpha_bars.log() - torch.log1p(-alpha_bars))


def uniform(alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """Evenly spaced from 0 to T - 1, both ends included (Nichol & Dhariwal 2021's respacing):
    k_i = floor(i (T - 1) / (N - 1) + 0.5)."""
    T = len(alpha_bars)
    if steps == 1:
        return [T - 1]
    return [int(i * (T - 1) / (steps - 1) + 0.5) for i in range(steps)]


def trailing(alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """Evenly spaced down from t = T: k_i = round(T - i T / N) - 1 (Lin et al. 2023, Table 2; diffusers'
    "trailing"). The first step is always at t = T; the last grid point is t = T / N, not t = 1."""
    T = len(alpha_bars)
    return sorted(round(T - i * T / steps) - 1 for i in range(steps))


def quadratic(alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """k_i = floor((i sqrt(0.8 T) / (N - 1))^2): DDIM's quadratic grid for CIFAR-10, denser at low noise,
    starting at t = 0.8 T as theirs did. Computed in integers (i^2 * 4T // (5 (N - 1)^2)), so the top
    is exactly 0.8 T where DDIM's float code can land one below."""
    T = len(alpha_bars)
    if steps == 1:
        return [T - 1]
    numerator, denominator = QUADRATIC_TOP.as_integer_ratio()
    return _distinct([i * i * numerator * T // (denominator * (steps - 1) ** 2) for i in range(steps)], T)


def logsnr(alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """Uniform in lambda between lambda(t = T) and lambda(t = 1) (DPM-Solver's grid for small images),
    each point rounded to the nearest timestep in lambda."""
    lam = half_log_snr(alpha_bars)
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    return _nearest(lam, targets)


def karras(alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7
    (Karras et al. 2022, eq. 5), sigma = sqrt((1 - abar) / abar) of t = T and t = 1; rounded to the
    nearest timestep in log sigma (= -lambda)."""
    lam = half_log_snr(alpha_bars)
    sigma = torch.exp(-lam)
    if steps == 1:
        return [len(alpha_bars) - 1]
    ramp = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    hi, lo = float(sigma[-1]) ** (1 / KARRAS_RHO), float(sigma[0]) ** (1 / KARRAS_RHO)
    targets = (hi + ramp * (lo - hi)) ** KARRAS_RHO
    return _nearest(lam, -targets.log())


def arctan(alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """sigma_i = tan(atan(sigma_max) + i / (N - 1) (atan(sigma_min) - atan(sigma_max))): even in the angle
    atan(sigma) = arccos(sqrt(abar)) between t = T and t = 1, the closed form that approximates Align Your
    Steps' optimised grids (Sabour et al. 2024) and the time of a cosine schedule; rounded to the nearest
    timestep in log sigma."""
    lam = half_log_snr(alpha_bars)
    if steps == 1:
        return [len(alpha_bars) - 1]
    angle = torch.atan(torch.exp(-lam))
    targets = torch.tan(torch.linspace(float(angle[-1]), float(angle[0]), steps, dtype=torch.float64))
    return _nearest(lam, -targets.log())


def _nearest(lam: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """The timestep whose lambda is closest to each target lambda, made distinct."""
    indices = (lam[None, :] - targets[:, None]).abs().argmin(dim=1)
    return _distinct(indices.tolist(), len(lam))


def _distinct(indices: list[int], T: int) -> list[int]:
    """Sorted, with merged neighbours pushed apart by one step: N distinct indices in [0, T - 1]."""
    out = sorted(indices)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    out[-1] = min(out[-1], T - 1)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - 1)
    return out


GRID_FUNCTIONS: dict[str, Callable[[torch.Tensor, int], list[int]]] = {
    "uniform": uniform,
    "trailing": trailing,
    "quadratic": quadratic,
    "logsnr": logsnr,
    "karras": karras,
    "arctan": arctan,
}


def step_grid(spacing: str, alpha_bars: torch.Tensor, steps: int) -> list[int]:
    """The N = ``steps`` timestep indices of ``spacing`` for a process with these alpha-bars (shape (T,))."""
    if spacing not in GRID_FUNCTIONS:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(GRID_FUNCTIONS)}")
    T = len(alpha_bars)
    if not 1 <= steps <= T:
        raise ValueError(f"sampling steps must be in [1, T = {T}], got {steps}")
    grid = GRID_FUNCTIONS[spacing](alpha_bars.to(torch.float64), steps)
    assert len(grid) == steps and all(b > a for a, b in itertools.pairwise(grid)), (spacing, steps, grid)
    return grid
