"""The fixed forward process of DDPM and the quantities derived from it.

Equation numbers refer to Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models"
(2020). Coefficients are computed once in float64 and cast to the data's dtype only when
gathered, so T = 4000 schedules keep their precision near t = 0.

Timesteps are 0-based indices: index i is the paper's t = i + 1 (see ``schedules``).
"""

from __future__ import annotations

import torch

from ddpmlab.core.math_names import OBJECTIVES, VARIANCES
from ddpmlab.core.schedules import make_betas
from ddpmlab.core.step_grids import step_grid, uniform


def gather(coefficients: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """coefficients[t] shaped (B, 1, ..., 1) to broadcast against ``like`` (B, C, H, W)."""
    values = coefficients.to(like.device)[t].to(like.dtype)
    return values.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class DiffusionProcess:
    """Precomputed coefficients of q(x_{1:T} | x_0) for one beta schedule.

    Attributes are float64 tensors of shape (T,), index i <-> timestep t = i + 1.
    """

    def __init__(self, betas: torch.Tensor, model_timesteps: torch.Tensor | None = None):
        betas = betas.to(torch.float64)
        self.betas = betas
        # The timestep the network sees at each index: itself, unless this process is a
        # respacing of a longer one the network was trained on (see ``respaced``).
        self.model_timesteps = torch.arange(len(betas)) if model_timesteps is None else model_timesteps.long()
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0), eq. 6-7.
        self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)
        self.posterior_mean_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)
        self.posterior_mean_coef_xt = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)
        # tilde-beta_1 is exactly 0 (x_0 is known given x_1 and x_0), so its log is -inf. Where a
        # log-variance is needed at t = 1 (the decoder L_0, the learned range) use tilde-beta_2,
        # as both the DDPM and Improved DDPM reference implementations do.
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat([first, self.posterior_variance[1:]]).log()

    @classmethod
    def from_schedule(cls, name: str, T: int) -> DiffusionProcess:
        return cls(make_betas(name, T))

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def respaced(self, kept: list[int]) -> DiffusionProcess:
        """The process on a subsequence of timesteps (0-based, strictly increasing).

        Betas are recomputed from the kept alpha-bars, beta_i = 1 - abar_{k_i} / abar_{k_{i-1}}
        (Nichol & Dhariwal 2021, sec. 4), so every kept alpha-bar is unchanged and any sampler
        runs on the shorter grid; the network is still called with the original timesteps.
        """
        k = torch.as_tensor(kept, dtype=torch.long)
        if k.ndim != 1 or len(k) == 0 or k[0] < 0 or k[-1] >= self.T or bool((k[1:] <= k[:-1]).any()):
            raise ValueError(f"kept timesteps must be strictly increasing indices in [0, {self.T - 1}], got {kept}")
        abar = self.alpha_bars[k]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return DiffusionProcess(1 - abar / abar_prev, model_timesteps=self.model_timesteps[k])

    def with_steps(self, steps: int, spacing: str = "uniform") -> DiffusionProcess:
        """The process on the ``steps``-point grid of ``spacing`` (``ddpmlab.core.step_grids``); itself when
        that grid is every timestep."""
        kept = step_grid(spacing, self.alpha_bars, steps)
        return self if kept == list(range(self.T)) else self.respaced(kept)

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

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for eps: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (xt - gather(self.sqrt_alpha_bars, t, xt) * x0) / gather(self.sqrt_one_minus_alpha_bars, t, xt)

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, "v-prediction")."""
        return gather(self.sqrt_alpha_bars, t, x0) * eps - gather(self.sqrt_one_minus_alpha_bars, t, x0) * x0

    def x0_eps_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v and eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
        a, b = gather(self.sqrt_alpha_bars, t, xt), gather(self.sqrt_one_minus_alpha_bars, t, xt)
        return a * xt - b * v, b * xt + a * v

    def x0_eps_from_output(self, objective: str, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output under ``objective`` (eps, x0 or v) as the pair (x0_hat, eps_hat)."""
        if objective == "eps":
            return self.x0_from_eps(xt, t, output), output
        if objective == "x0":
            return output, self.eps_from_x0(xt, t, output)
        if objective == "v":
            return self.x0_eps_from_v(xt, t, output)
        raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")

    def reverse_variance(self, kind: str) -> torch.Tensor:
        """Fixed sigma_t^2 of p(x_{t-1} | x_t), shape (T,) (sec. 3.2).

        ``fixed_large``: sigma_t^2 = beta_t, optimal for x_0 ~ N(0, I) and what the paper's
        CIFAR-10 samples used. ``fixed_small``: sigma_t^2 = tilde-beta_t (posterior
        variance), optimal for x_0 deterministically set to one point.
        At t = 1 both use tilde-beta_2 (see ``posterior_log_variance_clipped``): sampling adds
        no noise at t = 1, so only the decoder L_0 of the likelihood ever sees this value.
        """
        if kind == "fixed_large":
            return torch.cat([self.posterior_log_variance_clipped[:1].exp(), self.betas[1:]])
        if kind == "fixed_small":
            return self.posterior_log_variance_clipped.exp()
        allowed = ", ".join(v for v in VARIANCES if v != "learned_range")
        raise ValueError(f"unknown fixed reverse variance {kind!r}; allowed: {allowed} (learned_range comes from the network)")

    def learned_log_variance(self, raw: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log sigma_t^2 = v log beta_t + (1 - v) log tilde-beta_t with v = (raw + 1) / 2
        (Improved DDPM, Nichol & Dhariwal 2021, eq. 15): raw in [-1, 1] spans
        [tilde-beta_t, beta_t]. raw: (B, C, H, W), the network's variance channels."""
        v = (raw + 1) / 2
        return v * gather(self.betas.log(), t, raw) + (1 - v) * gather(self.posterior_log_variance_clipped, t, raw)

    def reverse_log_variance(self, variance: str, t: torch.Tensor, like: torch.Tensor, variance_output: torch.Tensor | None = None) -> torch.Tensor:
        """log sigma_t^2 of p_theta(x_{t-1} | x_t), broadcastable to ``like`` (B, C, H, W): a fixed
        variance (``reverse_variance``) or, for ``learned_range``, from the network's variance channels."""
        if variance == "learned_range":
            if variance_output is None:
                raise ValueError("variance 'learned_range' needs a network trained with train.learn_variance: true")
            return self.learned_log_variance(variance_output, t)
        return gather(self.reverse_variance(variance).log(), t, like)

    def p_mean_log_variance(
        self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, *, objective: str, variance: str, clip_x0: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p_theta(x_{t-1} | x_t) (eq. 1, sec. 3.2), and x0_hat.

        output: the network's raw output, (B, C, H, W), or (B, 2C, H, W) for a network that
        also predicts its variance (the second half, used by ``learned_range``).
        mu = tilde-mu_t(x_t, x0_hat) (eq. 7), which for eps-prediction without clipping is eq. 11.
        Returns (mean (B, C, H, W), log-variance broadcastable to it, x0_hat (B, C, H, W)).
        """
        mean_output, variance_output = split_output(output, xt.shape[1])
        x0, _ = self.x0_eps_from_output(objective, mean_output, xt, t)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        log_variance = self.reverse_log_variance(variance, t, xt, variance_output)
        return self.q_posterior_mean(x0, xt, t), log_variance, x0


def split_output(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean part, variance part or None) of a network output with C or 2C channels."""
    if output.shape[1] == channels:
        return output, None
    if output.shape[1] == 2 * channels:
        return output[:, :channels], output[:, channels:]
    raise ValueError(f"network output has {output.shape[1]} channels; expected {channels} or {2 * channels}")


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced 0-based indices from 0 to T - 1, both ends included (``step_grids.uniform``)."""
    if not 1 <= steps <= T:
        raise ValueError(f"sampling steps must be in [1, T = {T}], got {steps}")
    return uniform(torch.empty(T), steps)


def sample_timesteps(batch_size: int, T: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ Uniform({1, ..., T}) as 0-based indices, shape (B,)  (Algorithm 1, line 3)."""
    return torch.randint(0, T, (batch_size,), device=device, generator=generator)
