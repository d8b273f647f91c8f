"""UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor (UniP) and a corrector (UniC)
that reuses the network evaluation the next predictor step needs anyway, so N steps cost N
evaluations. Data prediction, the B(h) = e^h - 1 variant ("bh2"), as in diffusers'
UniPCMultistepScheduler defaults; the same signature as every sampler (``sampling.registry``).

Notation as in ``sampling.solvers``: per index i, alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i),
lambda_i = log(alpha_i / sigma_i); m = x0_hat. A step from s to t has h = lambda_t - lambda_s and
z = -h. With phi_1(z) = (e^z - 1) / z and phi_(k+1)(z) = (phi_k(z) - 1 / k!) / z, both parts are
(Zhao et al. 2023, eq. 8 with B(h) = e^h - 1, written for data prediction):

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^z - 1) m_s - alpha_t B(h) sum_k a_k D_k,
    D_k = (m_k - m_s) / r_k,  r_k = (lambda_k - lambda_s) / h,

where a solves sum_k a_k r_k^(i - 1) = i! z phi_(i+1)(z) / B(h), i = 1..p - 1 over the p - 1
older points (the predictor, order p) or i = 1..p over those and the new point t itself with
r = 1 and m_t evaluated at the predictor's x_t (the corrector); one older point gives the
closed form a = 1/2. Warm start with lower orders; the order falls to 1 on the last step
(diffusers' lower_order_final) and that step, to sigma = 0, is x0_hat. The network is never
evaluated at the corrected x_t: the next step uses the corrected state with the predictor
point's evaluation, which is what makes the corrector free.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpmlab.core.denoiser import Denoiser
from ddpmlab.sampling.solvers import half_log_snr
from ddpmlab.sampling.trajectory import SeededNoise, StepCallback, report_step, reverse_indices


def _phi_targets(h: float, count: int) -> list[float]:
    """i! z phi_(i+1)(z) / B(h) for i = 1..count, z = -h, B(h) = e^z - 1: the right-hand sides of both systems."""
    z = -h
    b_h = math.expm1(z)
    term, factorial, out = math.expm1(z) / z - 1, 1, []  # z phi_2(z)
    for i in range(1, count + 1):
        out.append(term * factorial / b_h)
        factorial *= i + 1
        term = term / z - 1 / factorial
    return out


def _unipc_update(
    x: torch.Tensor, denoiser: Denoiser, s: int, t: int, history: list[tuple[float, torch.Tensor]], new: torch.Tensor | None
) -> torch.Tensor:
    """x at index t from x at index s > t: the predictor (``new`` None) or the corrector (``new`` = m_t
    at the predictor's x_t). history: [(lambda, m)], oldest first, history[-1] at s; its length is the order."""
    lam_s, m_s = history[-1]
    lam_t = half_log_snr(denoiser, t)
    h = lam_t - lam_s
    alpha_t = denoiser.alpha_bar(t) ** 0.5
    sigma_ratio = ((1 - denoiser.alpha_bar(t)) / (1 - denoiser.alpha_bar(s))) ** 0.5
    b_h = math.expm1(-h)
    x_t = sigma_ratio * x - alpha_t * b_h * m_s
    ratios = [(lam_k - lam_s) / h for lam_k, _ in reversed(history[:-1])]  # r_k, newest older point first
    diffs = [(m_k - m_s) / r for (_, m_k), r in zip(reversed(history[:-1]), ratios)]
    if new is not None:
        ratios, diffs = ratios + [1.0], diffs + [new - m_s]
    if not diffs:
        return x_t
    if len(diffs) == 1 and (new is None or len(history) == 1):
        weights = [0.5]  # the closed form of order 2 (predictor) and of the first-order corrector
    else:
        matrix = np.array([[r**i for r in ratios] for i in range(len(ratios))], dtype=np.float64)
        weights = np.linalg.solve(matrix, np.array(_phi_targets(h, len(ratios)))).tolist()
    return x_t - alpha_t * b_h * sum(w * d for w, d in zip(weights, diffs))


def _unipc(denoiser: Denoiser, noise: SeededNoise, order: int, callback: StepCallback | None) -> torch.Tensor:
    N = denoiser.process.T
    x = noise()
    report_step(callback, 0, N, N, x, None)
    history: list[tuple[float, torch.Tensor]] = []
    before: tuple[torch.Tensor, int, list] | None = None  # (x_s, s, history) of the last predictor step
    for step, i in reverse_indices(denoiser):
        pred = denoiser(x, i)
        if before is not None:
            x_s, s, used = before
            x = _unipc_update(x_s, denoiser, s, i, used, new=pred.x0)
        history = (history + [(half_log_snr(denoiser, i), pred.x0)])[-order:]
        if i == 0:
            x = pred.x0  # order 1 to sigma = 0: x0_hat
        else:
            usable = min(order, len(history), i + 1)  # warm start; lower orders on the last steps
            before = (x, i, history[-usable:])
            x = _unipc_update(x, denoiser, i, i - 1, history[-usable:], new=None)
        report_step(callback, step, N, i, x, pred.x0)
    return x


@torch.no_grad()
def unipc_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """UniPC-bh2 of order 2 (UniP-2 with UniC): diffusers' UniPCMultistepScheduler default."""
    return _unipc(denoiser, noise, 2, callback)


@torch.no_grad()
def unipc_3_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """UniPC-bh2 of order 3 (UniP-3 with UniC); orders 1, 2 to start and 2, 1 on the last two steps."""
    return _unipc(denoiser, noise, 3, callback)
