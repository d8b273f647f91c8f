"""FID over training: the EMA snapshots the train stage kept, sampled like the final model.

The curve is for watching training, not for choosing a checkpoint: the reported numbers
always come from the final model, so no checkpoint is ever selected on a reported split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpmlab.config import Params
from ddpmlab.data import to_uint8
from ddpmlab.guidance import class_labels
from ddpmlab.samplers import SAMPLERS, image_seeds, sample_seeded, sampler_options
from ddpmlab.trained import TrainedDiffusion


def checkpoints_over_training(model_dir: Path) -> list[Path]:
    """The snapshots (step order) followed by the final model.pt."""
    return [*sorted((model_dir / "snapshots").glob("step-*.pt")), model_dir / "model.pt"]


@torch.no_grad()
def sample_checkpoint(path: Path, params: Params, device: torch.device) -> tuple[int, np.ndarray]:
    """(training step, uint8 images (evaluate.snapshot_samples, C, H, W)) of one checkpoint, drawn with
    params.sample's sampler at evaluate.snapshot_steps steps from the first seeds of the main samples
    (a conditional model: their classes too, at the first sample.guidance weight)."""
    trained = TrainedDiffusion.load(path, device)
    cfg, steps, count = params.sample, params.evaluate.snapshot_steps, params.evaluate.snapshot_samples
    num_classes = trained.model.num_classes
    conditioning = {"labels": class_labels(count, num_classes), "guidance": cfg.guidance[0]} if num_classes else {}
    shape = (trained.model.in_channels, trained.model.image_size, trained.model.image_size)
    x0 = sample_seeded(
        SAMPLERS[cfg.sampler], trained.sampling_network(cfg.precision, cfg.compile), trained.process.with_steps(steps), image_seeds(cfg.seed, 0, count),
        shape, batch_size=cfg.batch_size, device=device, clip_x0=cfg.clip_x0, objective=trained.params["objective"],
        **sampler_options(cfg.sampler, variance=cfg.variance, eta=cfg.eta), **conditioning,
    )  # fmt: skip
    return trained.step, to_uint8(x0).cpu().numpy()
