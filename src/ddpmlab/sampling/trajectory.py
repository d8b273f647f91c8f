"""Per-image noise and progress reporting shared by every sampler.

``SeededNoise`` draws x_T and every later Gaussian image by image, from per-image generators,
so image i depends only on its own seed and never on the batch it was drawn in.
``callback(info)`` receives a :class:`StepInfo` once with x_T (step 0) and then after every
step; progress bars and intermediate-image recorders are callbacks, not sampler code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ddpmlab.core.denoiser import Denoiser


class SeededNoise:
    """Standard normal draws of shape (B, *image_shape), row i from its own generator.

    Generators live on the CPU so a seed gives the same image on every device.
    """

    def __init__(self, seeds: Sequence[int], image_shape: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.image_shape = tuple(image_shape)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def __call__(self) -> torch.Tensor:
        draws = [torch.randn(self.image_shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


def image_seeds(base_seed: int, first_index: int, count: int) -> list[int]:
    """Seeds of images first_index .. first_index + count - 1 of a run seeded with base_seed.

    A fixed odd multiplier keeps the seeds of different base seeds from overlapping
    for any realistic number of images.
    """
    return [base_seed * 1_000_003 + i for i in range(first_index, first_index + count)]


@dataclass
class StepInfo:
    step: int  # reverse steps taken so far: 0 for x_T, then 1..total
    total: int  # number of reverse steps in this run
    t: int  # 0-based timestep index just left (x_t -> x_{t-1}); T for x_T
    x: torch.Tensor  # the current state (x_T at step 0, then x_{t-1}), (B, C, H, W)
    x0_pred: torch.Tensor | None  # the model's estimate of x_0 at this step (None at step 0)
    batch_start: int = 0  # index of this batch's first image (set by sample_seeded)


StepCallback = Callable[[StepInfo], None]


class TrajectoryRecorder:
    """A step callback that keeps x_t of the first ``count`` images (of the first batch) at
    ``columns`` evenly spaced points of the reverse process, x_T first and x_0 last."""

    def __init__(self, count: int, columns: int, total_steps: int):
        self.count = count
        self.keep_steps = set(torch.linspace(0, total_steps, max(2, columns)).round().long().tolist())
        self.frames: list[torch.Tensor] = []

    def __call__(self, info: StepInfo) -> None:
        if info.batch_start == 0 and info.step in self.keep_steps:
            self.frames.append(info.x[: self.count].detach().cpu())

    def strip(self) -> torch.Tensor:
        """(count * columns, C, H, W), row-major: row r is image r from x_T (left) to x_0 (right)."""
        return torch.stack(self.frames, dim=1).flatten(0, 1)


def reverse_indices(denoiser: Denoiser) -> list[tuple[int, int]]:
    """The walk every sampler takes: (step, index) pairs, step 1..N visiting index N-1..0 and moving to index - 1 (-1 = clean)."""
    N = denoiser.process.T
    return list(enumerate(range(N - 1, -1, -1), start=1))


def report_step(callback: StepCallback | None, step: int, total: int, index: int, x: torch.Tensor, x0: torch.Tensor | None) -> None:
    """Hand ``callback`` (if any) the state after ``step`` of ``total``: x at ``index`` and the x_0 prediction (None at step 0)."""
    if callback is not None:
        callback(StepInfo(step=step, total=total, t=index, x=x, x0_pred=x0))
