"""The variational bound on the negative log-likelihood, in bits per dimension.

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0                                 (Ho et al. 2020, eq. 5)
    L_T     = KL(q(x_T | x_0) || N(0, I))                 (the prior term; no parameters)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))         (Gaussian vs Gaussian)
    L_0     = -log p_theta(x_0 | x_1), a Gaussian integrated over each 8-bit bin      (eq. 13)

Data must lie on the 256 bin centres of [-1, 1] (uint8 images through ``to_model_range``).
Each KL uses one draw x_t ~ q(x_t | x_0), an unbiased estimate of the bound, exactly as the
papers' NLL columns are computed. Everything here runs in float64: the terms are small
differences of large numbers at large T.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpmlab.core.diffusion import DiffusionProcess, gather

BIN_HALF_WIDTH = 1.0 / 255.0  # 256 levels on [-1, 1] are 2 / 255 apart


def normal_kl(mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) per element, in nats (broadcasting)."""
    return 0.5 * (log_var2 - log_var1 - 1.0 + torch.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def _log_prob_between(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standardised bin edges, accurate in both tails."""
    # Mirror bins on the right of 0 so the difference is taken between small numbers.
    right = lower > 0
    a = torch.where(right, -upper, lower)
    b = torch.where(right, -lower, upper)
    return torch.log((torch.special.ndtr(b) - torch.special.ndtr(a)).clamp(min=1e-300))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """log p(x) per element for p = N(mean, e^log_variance) integrated over x's bin (eq. 13).

    The bin of x is [x - 1/255, x + 1/255], except that the first bin extends to -inf and
    the last to +inf, so the 256 probabilities sum to 1. x on the bin centres of [-1, 1].
    """
    inv_std = torch.exp(-0.5 * log_variance)
    lower = torch.where(x < -1 + BIN_HALF_WIDTH, torch.full_like(x, -math.inf), (x - BIN_HALF_WIDTH - mean) * inv_std)
    upper = torch.where(x > 1 - BIN_HALF_WIDTH, torch.full_like(x, math.inf), (x + BIN_HALF_WIDTH - mean) * inv_std)
    return _log_prob_between(lower, upper)


def prior_kl(process: DiffusionProcess, x0: torch.Tensor) -> torch.Tensor:
    """L_T per element: KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1)), nats. x0: (B, C, H, W)."""
    abar_T = process.alpha_bars[-1].to(x0)
    return normal_kl(abar_T.sqrt() * x0, torch.log(1 - abar_T), torch.zeros_like(x0), torch.zeros_like(x0))


def term_at(
    process: DiffusionProcess,
    output: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    *,
    objective: str,
    variance: str,
    clip_x0: bool = False,
) -> torch.Tensor:
    """L_{t-1} per element in nats, given the network ``output`` at (x_t, t): the KL of eq. 5
    where t > 1 (index > 0) and the decoder NLL -log p(x_0 | x_1) where t = 1 (index 0).
    All tensors (B, C, H, W) except t: (B,) 0-based indices."""
    mean, log_variance, _ = process.p_mean_log_variance(output, xt, t, objective=objective, variance=variance, clip_x0=clip_x0)
    true_mean = process.q_posterior_mean(x0, xt, t)
    true_log_variance = gather(process.posterior_log_variance_clipped, t, xt)
    kl = normal_kl(true_mean, true_log_variance, mean, log_variance)
    decoder_nll = -discretized_gaussian_log_likelihood(x0, mean, log_variance.expand_as(mean))
    return torch.where((t == 0).reshape(-1, *[1] * (x0.ndim - 1)), decoder_nll, kl)


def nats_to_bits_per_dim(per_element: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) nats -> (B,) bits per dimension."""
    return per_element.flatten(1).mean(dim=1) / math.log(2.0)


@torch.no_grad()
def vlb_terms(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    process: DiffusionProcess,
    x0: torch.Tensor,
    *,
    objective: str = "eps",
    variance: str = "fixed_large",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    model_dtype: torch.dtype = torch.float32,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Every term of the bound for every image, in bits per dimension.

    model(x_t, t) is called once per t with x_t in ``model_dtype`` and the process's model
    timesteps; ``generator`` (CPU) draws every x_t, so a seed fixes the estimate.
    x0: (B, C, H, W) on the bin centres of [-1, 1]. Returns (B, T + 1) float64 where
    column 0 is L_0 (decoder), column i in 1..T-1 is L_i = KL at t = i + 1, and column T
    is L_T (prior); the row sums are each image's bound. ``on_step(i)`` after each t.
    """
    x0 = x0.to(torch.float64)
    terms = torch.empty(x0.shape[0], process.T + 1, dtype=torch.float64)
    model_timesteps = process.model_timesteps.to(x0.device)
    for i in range(process.T - 1, -1, -1):
        t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        xt = process.q_sample(x0, t, noise)
        output = model(xt.to(model_dtype), model_timesteps[t]).to(torch.float64)
        per_element = term_at(process, output, x0, xt, t, objective=objective, variance=variance, clip_x0=clip_x0)
        terms[:, i] = nats_to_bits_per_dim(per_element).cpu()
        if on_step is not None:
            on_step(i)
    terms[:, process.T] = nats_to_bits_per_dim(prior_kl(process, x0)).cpu()
    return terms


def summarize(terms: torch.Tensor) -> dict[str, float]:
    """The bound and its parts, averaged over images, from ``vlb_terms``' (B, T + 1) output."""
    bound = terms.sum(dim=1)
    return {
        "bits_per_dim": bound.mean().item(),
        "standard_error": (bound.std().item() / len(bound) ** 0.5) if len(bound) > 1 else float("nan"),
        "decoder_L0": terms[:, 0].mean().item(),
        "kl_sum": terms[:, 1:-1].sum(dim=1).mean().item(),
        "prior_LT": terms[:, -1].mean().item(),
    }
