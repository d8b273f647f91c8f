"""First-order reverse processes: DDPM's ancestral sampler, DDIM, and Euler ancestral.

Every sampler here and in ``solvers`` has the signature of ``ddpmlab.sampling.registry``:

    sampler(denoiser, noise, *, callback=None, **options) -> x_0   (B, C, H, W)

and walks the denoiser's process from its last index N - 1 down to 0, then one step to clean
data (alpha-bar = 1). On a respaced process (``DiffusionProcess.respaced``) that is the same
sampler on fewer steps.
"""

from __future__ import annotations

import torch

from ddpmlab.core.denoiser import Denoiser
from ddpmlab.sampling.trajectory import SeededNoise, StepCallback, report_step, reverse_indices


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, noise: SeededNoise, *, variance: str = "fixed_large", callback: StepCallback | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2).

    x_T ~ N(0, I); for t = T..1: x_{t-1} = mu_theta(x_t, t) + sigma_t z, z = 0 at t = 1, with
    mu_theta = tilde-mu_t(x_t, x0_hat) (eq. 7). With eps-prediction and no clipping that is exactly
    Algorithm 2's mean (eq. 11). ``variance``: fixed_large (sigma^2 = beta), fixed_small (tilde-beta),
    or learned_range for a network trained to predict it (Improved DDPM eq. 15).
    """
    process = denoiser.process
    x = noise()
    report_step(callback, 0, process.T, process.T, x, None)
    for step, i in reverse_indices(denoiser):
        pred = denoiser(x, i)
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        x_next = process.q_posterior_mean(pred.x0, x, t)
        if i > 0:
            log_variance = process.reverse_log_variance(variance, t, x, pred.variance_output)
            x_next = x_next + torch.exp(0.5 * log_variance) * noise()
        x = x_next
        report_step(callback, step, process.T, i, x, pred.x0)
    return x


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, noise: SeededNoise, *, eta: float = 0.0, callback: StepCallback | None = None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12):

    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat + sigma_t z,
    sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}).

    eta = 0 is deterministic given x_T (the probability-flow ODE's Euler step in x / sqrt(abar));
    eta = 1 is DDPM with the posterior variance.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    process = denoiser.process
    abar, abar_prev = process.alpha_bars, process.alpha_bars_prev
    sigmas = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    x = noise()
    report_step(callback, 0, process.T, process.T, x, None)
    for step, i in reverse_indices(denoiser):
        pred = denoiser(x, i)
        sigma = float(sigmas[i])
        # eta > 1 can push sigma^2 past 1 - abar_{t-1}: the direction term then vanishes, not NaN
        direction = max(0.0, 1 - float(abar_prev[i]) - sigma**2) ** 0.5
        x = float(abar_prev[i]) ** 0.5 * pred.x0 + direction * pred.eps
        if sigma > 0:  # sigma_1 = 0 always, and every sigma is 0 when eta = 0: no draw, no cost
            x = x + sigma * noise()
        report_step(callback, step, process.T, i, x, pred.x0)
    return x


@torch.no_grad()
def euler_ancestral_sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None) -> torch.Tensor:
    """Euler ancestral as k-diffusion (``sample_euler_ancestral``, eta = 1) and diffusers
    (``EulerAncestralDiscreteScheduler``) define it, in EDM's variables x~ = x_t / sqrt(abar_t)
    with noise level sigma_t = sqrt((1 - abar_t) / abar_t):

    sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2), sigma_down = sqrt(sigma_next^2 - sigma_up^2),
    x~ <- x0_hat + (sigma_down / sigma) (x~ - x0_hat) + sigma_up z.

    An Euler step of the probability-flow ODE down to sigma_down, then fresh noise back up to
    sigma_next. Stochastic; the last step (sigma_next = 0) returns x0_hat.
    """
    process = denoiser.process
    x = noise()
    report_step(callback, 0, process.T, process.T, x, None)
    for step, i in reverse_indices(denoiser):
        pred = denoiser(x, i)
        sigma, sigma_next = denoiser.sigma(i), denoiser.sigma(i - 1)
        sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x_ve = x / denoiser.alpha_bar(i) ** 0.5
        x_ve = pred.x0 + (sigma_down / sigma) * (x_ve - pred.x0)
        if sigma_up > 0:
            x_ve = x_ve + sigma_up * noise()
        x = x_ve * denoiser.alpha_bar(i - 1) ** 0.5
        report_step(callback, step, process.T, i, x, pred.x0)
    return x
