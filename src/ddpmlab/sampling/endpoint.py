"""Endpoint error: how far a deterministic run lands from the many-step solution of the same ODE
from the same x_T. FID saturates at the real-data floor; this distance keeps separating samplers.

The reference is :data:`REFERENCE_SAMPLER` on min(T, :data:`REFERENCE_STEPS`) uniform timesteps
(every timestep of the default T = 100 model). The error of one image is the root mean square of
its pixel differences in the data range [-1, 1] (its L2 distance / sqrt(C H W)), so it does not
grow with the image size; a run's error is the mean over images (its interval is the sample
stage's, ``evaluation.resampling.mean_interval``: drawing never reaches up into scoring).
"""

from __future__ import annotations

import torch

from ddpmlab.sampling.plan import Run

REFERENCE_SAMPLER = "dpmpp_3m"  # third order, data prediction: stable on every grid
REFERENCE_STEPS = 250  # enough for T = 1000 models; every timestep of smaller T


def reference_run(T: int, guidance: float | None = None) -> Run:
    return Run(REFERENCE_SAMPLER, min(T, REFERENCE_STEPS), "uniform", guidance)


def endpoint_errors(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) root-mean-square pixel difference per image; x, reference: (B, C, H, W) in [-1, 1]."""
    return (x.double() - reference.double()).square().flatten(1).mean(dim=1).sqrt()

