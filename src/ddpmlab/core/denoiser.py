"""The denoiser every sampler calls: network + process + objective + clipping, built once.

    denoiser(x, i) -> Prediction(x0, eps, variance_output)

x: (B, C, H, W) the current x_t in the VP scaling of eq. 4, i: an index into ``process`` (a
respaced process when the grid skips timesteps; the network still sees its original timestep).
The network's output under ``objective`` (eps, x0 or v) becomes the pair (x0_hat, eps_hat);
with clipping x0_hat is clipped to the data range [-1, 1] and eps_hat re-derived from it, so
both stay consistent with x_t (eq. 4). This is the one place network outputs are converted:
samplers work in x0 / eps and never see the objective (the shape EDM and k-diffusion use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ddpmlab.core.diffusion import DiffusionProcess, split_output

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, C, H, W), t (B,)) -> (B, C or 2C, H, W)


class Prediction(NamedTuple):
    x0: torch.Tensor  # x0_hat, (B, C, H, W)
    eps: torch.Tensor  # eps_hat, (B, C, H, W)
    variance_output: torch.Tensor | None  # the network's variance channels (learned variance only)


class Denoiser:
    def __init__(self, network: Network, process: DiffusionProcess, objective: str = "eps", clip_x0: bool = True):
        self.network, self.process, self.objective, self.clip_x0 = network, process, objective, clip_x0
        self._model_timesteps: dict[torch.device, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, index: int) -> Prediction:
        t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
        if x.device not in self._model_timesteps:
            self._model_timesteps[x.device] = self.process.model_timesteps.to(x.device)
        output, variance_output = split_output(self.network(x, self._model_timesteps[x.device][t]).to(x.dtype), x.shape[1])
        x0, eps = self.process.x0_eps_from_output(self.objective, output, x, t)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.process.eps_from_x0(x, t, x0)
        return Prediction(x0, eps, variance_output)

    # Per-index coefficients as Python floats (float64 precision, no device round trips).
    def alpha_bar(self, index: int) -> float:
        """alpha-bar at ``index``; 1.0 at index -1, the clean end (t = 0) every sampler's last step goes to."""
        return 1.0 if index < 0 else float(self.process.alpha_bars[index])

    def sigma(self, index: int) -> float:
        """sqrt((1 - abar) / abar): the noise level of x_t / sqrt(abar) (EDM's sigma); 0 at the clean end."""
        abar = self.alpha_bar(index)
        return ((1 - abar) / abar) ** 0.5
