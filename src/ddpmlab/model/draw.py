"""Drawing seeded images with a trained model: the one code path of the `sample` and `search` stages, the
FID-over-training snapshots, `ddpmlab generate` and the MLflow model, so the same seed and settings give the
same image. A :class:`~ddpmlab.sampling.plan.Run` arrives with its sampler resolved; nothing here looks it up again."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ddpmlab.data.image_set import to_uint8
from ddpmlab.model.trained import TrainedDiffusion
from ddpmlab.nn.acceleration import InferenceNetwork
from ddpmlab.sampling.plan import Run
from ddpmlab.sampling.registry import sample_seeded
from ddpmlab.sampling.trajectory import StepCallback


def draw_images(
    trained: TrainedDiffusion, network: InferenceNetwork, run: Run, seeds: Sequence[int], labels: np.ndarray | None, *,
    clip_x0: bool, batch_size: int, device: torch.device, callback: StepCallback | None = None,
) -> np.ndarray:  # fmt: skip
    """uint8 images (len(seeds), C, H, W): image j from ``seeds[j]`` (and class ``labels[j]``) with
    ``run``'s sampler, grid, step count, guidance weight and options. ``network`` is
    ``trained.sampling_network(...)``, built once by the caller."""
    x0 = draw_tensor(trained, network, run, seeds, labels, clip_x0=clip_x0, batch_size=batch_size, device=device, callback=callback)
    return to_uint8(x0).cpu().numpy()


def draw_tensor(
    trained: TrainedDiffusion, network: InferenceNetwork, run: Run, seeds: Sequence[int], labels: np.ndarray | None, *,
    clip_x0: bool, batch_size: int, device: torch.device, callback: StepCallback | None = None,
) -> torch.Tensor:  # fmt: skip
    """The same images as :func:`draw_images` before quantisation: float (len(seeds), C, H, W) in the data range, on ``device``."""
    shape = (trained.model.in_channels, trained.model.image_size, trained.model.image_size)
    return sample_seeded(
        run.spec, network, run.process(trained.process), seeds, shape, batch_size=batch_size, objective=trained.params["objective"],
        clip_x0=clip_x0, device=device, callback=callback, labels=labels, guidance=run.guidance or 0.0, **run.option_values,
    )  # fmt: skip
