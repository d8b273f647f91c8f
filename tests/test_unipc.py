"""UniPC against diffusers' UniPCMultistepScheduler on identical model outputs.

Both run the exact eps-network of Gaussian data (tests/test_solvers.py) in float64 on the same
timesteps. diffusers builds its own timestep grids from num_inference_steps; its timesteps and
sigmas are set to ddpmlab's grid instead (sigma = sqrt((1 - abar) / abar) at each grid timestep,
then 0, as its final_sigmas_type="zero" does), so the two differ only in the solver. Its defaults
are the method here: bh2, data prediction, lower_order_final, the corrector on every step.
"""

from __future__ import annotations

import diffusers  # the dev extra installs it
import pytest
import torch

from ddpmlab.core.denoiser import Denoiser
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.sampling.registry import SAMPLERS
from ddpmlab.sampling.trajectory import SeededNoise
from test_solvers import gaussian_eps


def diffusers_unipc(base: DiffusionProcess, grid: list[int], order: int, x_T: torch.Tensor) -> torch.Tensor:
    scheduler = diffusers.UniPCMultistepScheduler(num_train_timesteps=base.T, trained_betas=base.betas.numpy(), solver_order=order)
    scheduler.set_timesteps(len(grid))
    descending = list(reversed(grid))
    abar = base.alpha_bars.to(torch.float64)[descending]
    scheduler.timesteps = torch.tensor(descending, dtype=torch.int64)
    scheduler.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    network, x = gaussian_eps(base), x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(network(x, t.repeat(len(x))), t, x).prev_sample
    return x


@pytest.mark.parametrize("sampler,order", [("unipc", 2), ("unipc_3", 3)])
@pytest.mark.parametrize("steps,spacing", [(2, "uniform"), (3, "logsnr"), (5, "uniform"), (8, "karras"), (20, "quadratic")])
def test_unipc_matches_diffusers(sampler, order, steps, spacing):
    torch.set_default_dtype(torch.float64)
    try:
        base = DiffusionProcess.from_schedule("linear", 100)
        process = base.with_steps(steps, spacing)
        ours = SAMPLERS[sampler].function(Denoiser(gaussian_eps(base), process, "eps", clip_x0=False), SeededNoise(range(6), (1, 4, 4)))
        theirs = diffusers_unipc(base, process.model_timesteps.tolist(), order, SeededNoise(range(6), (1, 4, 4))())
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-9), (ours - theirs).abs().max()
