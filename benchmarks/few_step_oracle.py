"""Issue 30 groundwork (branch only): endpoint error of few-step samplers on the Gaussian-data
oracle (tests/test_solvers.py's closed form), with and without an analytic first step
(eps_hat(x_T, T) = x_T, AMED / GENIE), at the same number of network evaluations.

    PYTHONPATH=src:. python benchmarks/few_step_oracle.py
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, "tests")
from ddpmlab.core.denoiser import Denoiser, Prediction
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.sampling.registry import SAMPLERS
from ddpmlab.sampling.trajectory import SeededNoise
from test_solvers import gaussian_eps, ode_solution


class AnalyticFirst:
    """A denoiser whose prediction at the grid's noisiest index is analytic (eps_hat = x_T), saving one call."""

    def __init__(self, denoiser: Denoiser):
        self.inner, self.process, self.calls = denoiser, denoiser.process, 0

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        if i == self.process.T - 1:
            abar = self.inner.alpha_bar(i)
            return Prediction((x - (1 - abar) ** 0.5 * x) / abar**0.5, x, None)
        self.calls += 1
        return self.inner(x, i)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def main() -> None:
    torch.set_default_dtype(torch.float64)
    base = DiffusionProcess.from_schedule("linear", 100)
    x_T = SeededNoise(range(64), (1, 4, 4))()
    exact = ode_solution(x_T, float(base.alpha_bars[-1]), 1.0)
    for spacing in ("uniform", "quadratic", "logsnr", "karras"):
        for nfe in (3, 4, 5, 6):
            row = {}
            for sampler in ("ddim", "plms", "dpmpp_2m", "ipndm"):
                plain = SAMPLERS[sampler].function(Denoiser(gaussian_eps(base), base.with_steps(nfe, spacing), "eps", False), SeededNoise(range(64), (1, 4, 4)))
                analytic_denoiser = AnalyticFirst(Denoiser(gaussian_eps(base), base.with_steps(nfe + 1, spacing), "eps", False))
                analytic = SAMPLERS[sampler].function(analytic_denoiser, SeededNoise(range(64), (1, 4, 4)))
                assert analytic_denoiser.calls == nfe
                row[sampler] = f"{(plain - exact).abs().mean():.3f} -> {(analytic - exact).abs().mean():.3f}"
            print(f"{spacing:9s} {nfe} NFE  " + "  ".join(f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
