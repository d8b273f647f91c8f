"""High-order deterministic solvers of the probability-flow ODE: DPM-Solver++ (2M, 3M), EDM's
Heun and PLMS. Same signature as every sampler (``ddpmlab.sampling.ancestral``); deterministic given x_T.

Notation, per index i of the denoiser's process: alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i),
lambda_i = log(alpha_i / sigma_i) (half log-SNR). The last step always goes from index 0 to
clean data (sigma = 0, lambda = +inf), where every solver's update reduces to x0_hat.
Clipping (``clip_x0``) applies to each network prediction; the solvers' linear combinations
of several predictions are not clipped again.
"""

from __future__ import annotations

import math

import torch

from ddpmlab.core.denoiser import Denoiser
from ddpmlab.sampling.trajectory import SeededNoise, StepCallback, report_step, reverse_indices

# DPM-Solver++ drops to lower orders near the end of grids shorter than this (diffusers'
# lower_order_final): high-order steps are unstable over the last few large steps.
LOWER_ORDER_FINAL_BELOW = 15


def half_log_snr(denoiser: Denoiser, index: int) -> float:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 at grid ``index``: the time
    variable of DPM-Solver (Lu et al. 2022) and UniPC."""
    abar = denoiser.alpha_bar(index)
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def _dpmpp_update(x: torch.Tensor, denoiser: Denoiser, i: int, history: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """One DPM-Solver++ step from index i to i - 1 (> -1) with the newest len(history) data
    predictions (Lu et al. 2022b, arXiv 2211.01095: eq. 9 for order 1, Algorithm 2 for order 2,
    and the third-order multistep update of their reference code).

    history: [(lambda, x0_hat)], oldest first; history[-1] is at index i.
    """
    lam_t = half_log_snr(denoiser, i - 1)
    lam_s0, m0 = history[-1]
    h = lam_t - lam_s0
    alpha_t = denoiser.alpha_bar(i - 1) ** 0.5
    sigma_ratio = ((1 - denoiser.alpha_bar(i - 1)) / (1 - denoiser.alpha_bar(i))) ** 0.5
    phi_1 = math.expm1(-h)  # e^{-h} - 1
    x_next = sigma_ratio * x - alpha_t * phi_1 * m0
    if len(history) == 1:
        return x_next
    lam_s1, m1 = history[-2]
    r0 = (lam_s0 - lam_s1) / h
    d1_0 = (m0 - m1) / r0
    if len(history) == 2:
        return x_next - 0.5 * alpha_t * phi_1 * d1_0
    lam_s2, m2 = history[-3]
    r1 = (lam_s1 - lam_s2) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1  # (e^{-h} - 1) / h + 1
    phi_3 = phi_2 / h - 0.5  # (e^{-h} - 1 + h) / h^2 - 1/2
    return x_next + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2


def _dpmpp_multistep(denoiser: Denoiser, noise: SeededNoise, order: int, callback: StepCallback | None) -> torch.Tensor:
    N = denoiser.process.T
    x = noise()
    report_step(callback, 0, N, N, x, None)
    history: list[tuple[float, torch.Tensor]] = []
    for step, i in reverse_indices(denoiser):
        pred = denoiser(x, i)
        history = (history + [(half_log_snr(denoiser, i), pred.x0)])[-order:]
        if i == 0:
            x = pred.x0  # to sigma = 0 every order reduces to the first-order step: x0_hat
        else:
            usable = min(order, len(history))  # warm start: the first steps have fewer predictions
            if i == 1 and N < LOWER_ORDER_FINAL_BELOW:
                usable = min(usable, 2)
            x = _dpmpp_update(x, denoiser, i, history[-usable:])
        report_step(callback, step, N, i, x, pred.x0)
    return x


@torch.no_grad()
def dpmpp_2m_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in data prediction over lambda (Lu et al. 2022b, Algorithm 2).

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) (m_0 + (m_0 - m_1) / (2 r)), h = lambda_t - lambda_s,
    r = h_prev / h; the first step is first order (DDIM), the last goes to x0_hat."""
    return _dpmpp_multistep(denoiser, noise, 2, callback)


@torch.no_grad()
def dpmpp_3m_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(3M): third-order multistep; warm start with orders 1 and 2, and on grids of
    fewer than 15 steps second order on the step before the last (as the reference implementation)."""
    return _dpmpp_multistep(denoiser, noise, 3, callback)


@torch.no_grad()
def heun_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1, S_churn = 0) on the
    model's discrete sigmas, in x~ = x_t / sqrt(abar_t) with sigma = sqrt((1 - abar) / abar):

    d = (x~ - D(x~; sigma_i)) / sigma_i, x~' = x~ + (sigma_{i+1} - sigma_i) d, and unless sigma_{i+1} = 0
    the trapezoidal correction x~ + (sigma_{i+1} - sigma_i) (d + d') / 2 with d' at (x~', sigma_{i+1}).
    The second evaluation lands on the next grid timestep, so no sigma is ever interpolated.
    The last step (to sigma = 0) is Euler. NFE = 2N - 1.
    """
    N = denoiser.process.T
    x = noise()
    report_step(callback, 0, N, N, x, None)
    for step, i in reverse_indices(denoiser):
        sigma, sigma_next = denoiser.sigma(i), denoiser.sigma(i - 1)
        scale, scale_next = denoiser.alpha_bar(i) ** 0.5, denoiser.alpha_bar(i - 1) ** 0.5
        x_ve = x / scale
        pred = denoiser(x, i)
        slope = (x_ve - pred.x0) / sigma
        x_ve_next = x_ve + (sigma_next - sigma) * slope
        if i > 0:
            corrected = denoiser(x_ve_next * scale_next, i - 1)
            slope_next = (x_ve_next - corrected.x0) / sigma_next
            x_ve_next = x_ve + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        x = x_ve_next * scale_next
        report_step(callback, step, N, i, x, pred.x0)
    return x


# Adams-Bashforth weights on eps_hat, newest first, for 1..4 stored predictions (PNDM eq. 12 at four).
PLMS_WEIGHTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def plms_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022, eq. 12): a fourth-order
    Adams-Bashforth combination of the last four eps_hat, eps' = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24,
    fed to DDIM's transfer phi(x_t, eps') = sqrt(abar_{t-1}) (x_t - sqrt(1 - abar_t) eps') / sqrt(abar_t)
    + sqrt(1 - abar_{t-1}) eps'. Warm start with the lower-order Adams-Bashforth weights (1, 2, 3
    predictions), so N steps cost N network evaluations (diffusers' PNDM instead spends one more on
    an improved-Euler first step).

    The equal-step weights are exact for a grid even in sigma / alpha, the variable phi integrates
    in; on the grids here (even in t, lambda, ...) that variable's steps vary smoothly, which
    limits the global order to 2 (measured: tests/test_solvers.py).
    """
    N = denoiser.process.T
    x = noise()
    report_step(callback, 0, N, N, x, None)
    history: list[torch.Tensor] = []
    for step, i in reverse_indices(denoiser):
        pred = denoiser(x, i)
        history = ([pred.eps] + history)[:4]
        eps = sum(w * e for w, e in zip(PLMS_WEIGHTS[len(history) - 1], history))
        x = _ddim_transfer(x, eps, denoiser, i)
        report_step(callback, step, N, i, x, pred.x0)
    return x


def _ddim_transfer(x: torch.Tensor, eps: torch.Tensor, denoiser: Denoiser, i: int) -> torch.Tensor:
    """PNDM's transfer phi: the deterministic DDIM step from index i to i - 1 with noise estimate ``eps``."""
    abar, abar_next = denoiser.alpha_bar(i), denoiser.alpha_bar(i - 1)
    x0 = (x - (1 - abar) ** 0.5 * eps) / abar**0.5
    return abar_next**0.5 * x0 + (1 - abar_next) ** 0.5 * eps


# Gauss-Legendre nodes and weights on [-1, 1] with two points: exact for the cubic interpolants of
# iPNDM's four-point steps.
_GAUSS_NODES = (-(1 / 3) ** 0.5, (1 / 3) ** 0.5)


def adams_bashforth_weights(nodes: list[float], start: float, end: float) -> list[float]:
    """w_j with sum_j w_j f(nodes[j]) = the integral from ``start`` to ``end`` of the polynomial through
    (nodes[j], f(nodes[j])): the variable-step Adams-Bashforth weights (exact for polynomials of
    degree < len(nodes)), by two-point Gauss-Legendre quadrature of each Lagrange basis polynomial."""
    half = (end - start) / 2
    points = [start + half * (1 + g) for g in _GAUSS_NODES]
    weights = []
    for j, node in enumerate(nodes):
        others = [m for k, m in enumerate(nodes) if k != j]
        weights.append(half * sum(math.prod((p - m) / (node - m) for m in others) for p in points))
    return weights


IPNDM_MAX_ORDER = 4


@torch.no_grad()
def ipndm_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023, the DEIS paper's improved PNDM), with variable steps as in Zhou et al.
    2024 (AMED): the probability-flow ODE in EDM's variables, dx~/dsigma = eps_hat(x~, sigma) with
    x~ = x_t / sqrt(abar_t) and sigma = sqrt((1 - abar) / abar), integrated by Adams-Bashforth over
    the last four eps_hat, whose weights integrate the interpolating polynomial over the step's
    actual sigmas (so its order holds on any grid, unlike the equal-step weights of plms); warm
    start with orders 1, 2, 3, and the last step to sigma = 0 the same way. NFE = steps.
    """
    N = denoiser.process.T
    x = noise()
    report_step(callback, 0, N, N, x, None)
    history: list[tuple[float, torch.Tensor]] = []  # (sigma, eps_hat), newest first
    for step, i in reverse_indices(denoiser):
        sigma, sigma_next = denoiser.sigma(i), denoiser.sigma(i - 1)
        pred = denoiser(x, i)
        history = ([(sigma, pred.eps)] + history)[:IPNDM_MAX_ORDER]
        weights = adams_bashforth_weights([s for s, _ in history], sigma, sigma_next)
        x_ve = x / denoiser.alpha_bar(i) ** 0.5 + sum(w * e for w, (_, e) in zip(weights, history))
        x = x_ve * denoiser.alpha_bar(i - 1) ** 0.5
        report_step(callback, step, N, i, x, pred.x0)
    return x
