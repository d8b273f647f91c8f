"""Reverse processes. Every sampler has the same signature:

    sampler(model, process, noise, *, callback=None, **options) -> x_0   (B, C, H, W)

``noise`` is a :class:`SeededNoise`: it draws x_T and every later Gaussian, image by image,
from per-image generators, so image i depends only on its own seed and never on the batch
it was drawn in. ``callback(info)`` receives a :class:`StepInfo` once with x_T (step 0) and
then after every step; progress bars and intermediate-image recorders are callbacks, not
sampler code. :func:`sample_seeded` draws any number of images in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddpmlab.diffusion import DiffusionProcess, split_output
from ddpmlab.guidance import check_labels, guided


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


def _predict(model, process: DiffusionProcess, x: torch.Tensor, t_index: int, objective: str, clip_x0: bool):
    """(x0_hat, eps_hat) at timestep index ``t_index`` of ``process``; with clipping, eps_hat is
    re-derived from the clipped x0_hat so the two stay consistent with x_t (eq. 4)."""
    t = torch.full((x.shape[0],), t_index, device=x.device, dtype=torch.long)
    output, _ = split_output(model(x, process.model_timesteps.to(x.device)[t]).to(x.dtype), x.shape[1])
    x0, eps = process.x0_eps_from_output(objective, output, x, t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = process.eps_from_x0(x, t, x0)
    return t, x0, eps


@torch.no_grad()
def ddpm_sample(
    model: torch.nn.Module,
    process: DiffusionProcess,
    noise: SeededNoise,
    *,
    variance: str = "fixed_large",
    clip_x0: bool = True,
    objective: str = "eps",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Algorithm 2).

    x_T ~ N(0, I); for t = T..1: x_{t-1} = mu_theta(x_t, t) + sigma_t z, z = 0 at t = 1, with
    mu_theta = tilde-mu_t(x_t, x0_hat) (``DiffusionProcess.p_mean_log_variance``). With
    eps-prediction and no clipping that is exactly Algorithm 2's mean; clipping x0_hat to
    [-1, 1] (the data range) is what the reference code does. ``variance``: fixed_large,
    fixed_small, or learned_range for a network trained to predict it.
    On a respaced process (``DiffusionProcess.respaced``) this is the same sampler on fewer steps.
    """
    x = noise()
    if callback is not None:
        callback(StepInfo(step=0, total=process.T, t=process.T, x=x, x0_pred=None))
    model_timesteps = process.model_timesteps.to(x.device)
    for step, t_index in enumerate(range(process.T - 1, -1, -1), start=1):
        t = torch.full((x.shape[0],), t_index, device=x.device, dtype=torch.long)
        output = model(x, model_timesteps[t]).to(x.dtype)
        mean, log_variance, x0_pred = process.p_mean_log_variance(output, x, t, objective=objective, variance=variance, clip_x0=clip_x0)
        x = mean + torch.exp(0.5 * log_variance) * noise() if t_index > 0 else mean
        if callback is not None:
            callback(StepInfo(step=step, total=process.T, t=t_index, x=x, x0_pred=x0_pred))
    return x


@torch.no_grad()
def ddim_sample(
    model: torch.nn.Module,
    process: DiffusionProcess,
    noise: SeededNoise,
    *,
    eta: float = 0.0,
    clip_x0: bool = True,
    objective: str = "eps",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12):

    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat + sigma_t z,
    sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}).

    eta = 0 is deterministic given x_T; eta = 1 is DDPM with the posterior variance.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    abar, abar_prev = process.alpha_bars, process.alpha_bars_prev
    sigmas = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    x = noise()
    if callback is not None:
        callback(StepInfo(step=0, total=process.T, t=process.T, x=x, x0_pred=None))
    for step, t_index in enumerate(range(process.T - 1, -1, -1), start=1):
        _, x0_pred, eps = _predict(model, process, x, t_index, objective, clip_x0)
        sigma = float(sigmas[t_index])
        # eta > 1 can push sigma^2 past 1 - abar_{t-1}: the direction term then vanishes, not NaN
        direction = max(0.0, 1 - float(abar_prev[t_index]) - sigma**2) ** 0.5
        x = float(abar_prev[t_index]) ** 0.5 * x0_pred + direction * eps
        if sigma > 0:  # sigma_1 = 0 always, and every sigma is 0 when eta = 0: no draw, no cost
            x = x + sigma * noise()
        if callback is not None:
            callback(StepInfo(step=step, total=process.T, t=t_index, x=x, x0_pred=x0_pred))
    return x


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def sampler_options(sampler: str, *, variance: str, eta: float) -> dict:
    """The sampler-specific keyword arguments: DDPM's reverse variance or DDIM's eta."""
    return {"ddpm": {"variance": variance}, "ddim": {"eta": eta}}[sampler]


def sample_seeded(
    sampler: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    process: DiffusionProcess,
    seeds: Sequence[int],
    image_shape: Sequence[int],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    guidance: float = 0.0,
    **options,
) -> torch.Tensor:
    """Draw image i from ``seeds[i]`` for every i, ``batch_size`` images at a time.

    Returns (len(seeds), *image_shape) on ``device``. ``callback`` sees every batch's steps,
    with ``StepInfo.batch_start`` telling the batches apart. A conditional model
    (``model.num_classes`` > 0) draws image i of class ``labels[i]`` with classifier-free
    guidance weight ``guidance`` (:mod:`ddpmlab.guidance`); labels are checked first.
    """
    num_classes = getattr(model, "num_classes", 0)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        check_labels(labels, num_classes)
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels for {len(seeds)} images")
    elif guidance:
        raise ValueError(f"guidance {guidance} needs class labels and a conditional model")
    outputs = []
    for start in range(0, len(seeds), batch_size):
        noise = SeededNoise(seeds[start : start + batch_size], image_shape, device)
        network = model
        if labels is not None:
            network = guided(model, labels[start : start + batch_size], guidance, num_classes, image_shape[0])

        def batch_callback(info: StepInfo, start: int = start) -> None:
            info.batch_start = start
            callback(info)

        outputs.append(sampler(network, process, noise, callback=batch_callback if callback else None, **options))
    return torch.cat(outputs)
