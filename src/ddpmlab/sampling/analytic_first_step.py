"""The analytic first step: any deterministic sampler with its first network call replaced by
the value the network must approach at the noise end, so N steps cost one evaluation fewer.

At the top of the grid x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps with abar_T ~ 0 (2e-5 for the
linear schedule, ~1e-8 at T = 1000 for cosine), so eps_hat(x_T) = E[eps | x_T] = x_T + O(sqrt(abar_T)):
the prediction GENIE (Dockhorn et al. 2022) and AMED (Zhou et al. 2024) use in place of the first
evaluation. Its x0_hat follows from eq. 4: |x0_hat| = |x_T| (1 - sqrt(1 - abar_T)) / sqrt(abar_T) ~ |x_T|
sqrt(abar_T) / 2, far inside the clipping range. For data of mean mu
and any covariance the error of that eps_hat is sqrt(abar_T) |mu| to first order; the Gaussian test
in tests/test_solvers.py checks it against the closed form. On a grid whose top is not near the
noise end (quadratic starts at 0.8 T) the same value is a worse guess: the grid is the user's choice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpmlab.core.denoiser import Denoiser, Prediction
from ddpmlab.sampling.trajectory import SeededNoise, StepCallback


class AnalyticFirstStep:
    """A denoiser that answers at its grid's top index without calling the network: eps_hat = x."""

    def __init__(self, denoiser: Denoiser):
        self.inner = denoiser
        self.top = denoiser.process.T - 1

    def __call__(self, x: torch.Tensor, index: int) -> Prediction:
        if index != self.top:
            return self.inner(x, index)
        abar = self.inner.alpha_bar(index)
        return Prediction((1 - (1 - abar) ** 0.5) / abar**0.5 * x, x, None)

    def __getattr__(self, name: str):  # process, alpha_bar, sigma, clip_x0: the wrapped denoiser's
        return getattr(self.inner, name)


def with_analytic_first_step(sampler: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``sampler`` run on a denoiser whose first (top-index) call is analytic."""

    def sample(denoiser: Denoiser, noise: SeededNoise, *, callback: StepCallback | None = None, **options) -> torch.Tensor:
        return sampler(AnalyticFirstStep(denoiser), noise, callback=callback, **options)

    sample.__doc__ = f"{sampler.__name__} with the analytic first step (``sampling.analytic_first_step``)."
    return sample

