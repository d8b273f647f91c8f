"""The fixed forward process of DDPM and the quantities derived from it.

Equation numbers refer to Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models"
(2020). Coefficients are computed once in float64 and cast to the data's dtype only when
gathered, so T = 4000 schedules keep their precision near t = 0.

Timesteps are 0-based indices: index i is the paper's t = i + 1 (see ``schedules``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpmlab.schedules import make_betas

VARIANCES = ("fixed_large", "fixed_small")


def gather(coefficients: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """coefficients[t] shaped (B, 1, ..., 1) to broadcast against ``like`` (B, C, H, W)."""
    values = coefficients.to(like.device)[t].to(like.dtype)
    return values.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class DiffusionProcess:
    """Precomputed coefficients of q(x_{1:T} | x_0) for one beta schedule.

    Attributes are float64 tensors of shape (T,), index i <-> timestep t = i + 1.
    """

    def __init__(self, betas: torch.Tensor):
        betas = betas.to(torch.float64)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0), eq. 6-7.
        self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)
        self.posterior_mean_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)
        self.posterior_mean_coef_xt = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)

    @classmethod
    def from_schedule(cls, name: str, T: int) -> DiffusionProcess:
        return cls(make_betas(name, T))

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    # -- forward process -------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (eq. 4).

        x0, noise: (B, C, H, W); t: (B,) long indices. Returns (B, C, H, W).
        """
        return gather(self.sqrt_alpha_bars, t, x0) * x0 + gather(self.sqrt_one_minus_alpha_bars, t, x0) * noise

    # -- posterior and parameterisation ----------------------------------------------
    def q_posterior_mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean tilde-mu_t(x_t, x_0) of q(x_{t-1} | x_t, x_0)  (eq. 7). Shapes as ``xt``."""
        return gather(self.posterior_mean_coef_x0, t, xt) * x0 + gather(self.posterior_mean_coef_xt, t, xt) * xt

    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (xt - gather(self.sqrt_one_minus_alpha_bars, t, xt) * eps) / gather(self.sqrt_alpha_bars, t, xt)

    def reverse_variance(self, kind: str) -> torch.Tensor:
        """sigma_t^2 of p(x_{t-1} | x_t), shape (T,) (sec. 3.2).

        ``fixed_large``: sigma_t^2 = beta_t, optimal for x_0 ~ N(0, I) and what the paper's
        CIFAR-10 samples used. ``fixed_small``: sigma_t^2 = tilde-beta_t (posterior
        variance), optimal for x_0 deterministically set to one point.
        """
        if kind == "fixed_large":
            return self.betas
        if kind == "fixed_small":
            return self.posterior_variance
        raise ValueError(f"unknown reverse variance {kind!r}; allowed: {', '.join(VARIANCES)}")


def sample_timesteps(batch_size: int, T: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ Uniform({1, ..., T}) as 0-based indices, shape (B,)  (Algorithm 1, line 3)."""
    return torch.randint(0, T, (batch_size,), device=device, generator=generator)


def eps_mse_loss(model: torch.nn.Module, process: DiffusionProcess, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_simple (eq. 14): E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2.

    Averaged over every pixel, which differs from the paper's sum only by a constant factor.
    x0, noise: (B, C, H, W) in [-1, 1] / N(0, I); t: (B,) indices. Returns a scalar.
    """
    xt = process.q_sample(x0, t, noise)
    return F.mse_loss(model(xt, t), noise)
