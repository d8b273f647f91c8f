"""The forward process as images: test images under q(x_t | x_0) at evenly spaced t, for the report's
forward strip and `ddpmlab compare`'s schedules side by side. Arrays only; the figures draw them."""

from __future__ import annotations

import numpy as np
import torch

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.data.image_set import to_model_range, to_uint8


def forward_strip(images: np.ndarray, betas: torch.Tensor, columns: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Images under q(x_t | x_0) at ``columns`` timesteps from t = 0 (clean) to T (eq. 4).

    images: (R, C, H, W) uint8. Returns ((R * columns, C, H, W) uint8 row-major, the t of each column).
    """
    process = DiffusionProcess(betas)
    ts = np.linspace(0, process.T, columns).round().astype(int).tolist()
    x0 = to_model_range(torch.from_numpy(images))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    frames = []
    for t in ts:
        if t == 0:
            frames.append(x0)
        else:
            index = torch.full((len(x0),), t - 1, dtype=torch.long)
            frames.append(process.q_sample(x0, index, noise))
    stacked = torch.stack(frames, dim=1).flatten(0, 1)
    return to_uint8(stacked).numpy(), ts
