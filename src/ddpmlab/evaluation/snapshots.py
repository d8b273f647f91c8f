"""FID over training: the EMA snapshots the train stage kept, sampled like the final model.

The curve is for watching training, not for choosing a checkpoint: the reported numbers
always come from the final model, so no checkpoint is ever selected on a reported split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ddpmlab.config import Params
from ddpmlab.core.math_names import SEARCHED
from ddpmlab.model.draw import draw_images
from ddpmlab.model.trained import TrainedDiffusion
from ddpmlab.nn.autotune import planned_calls
from ddpmlab.sampling.guidance import class_labels
from ddpmlab.sampling.plan import DEFAULT_SPACING, build_plan
from ddpmlab.sampling.trajectory import image_seeds


def checkpoints_over_training(model_dir: Path) -> list[Path]:
    """The snapshots (step order) followed by the final model.pt."""
    return [*sorted((model_dir / "snapshots").glob("step-*.pt")), model_dir / "model.pt"]


@torch.no_grad()
def sample_checkpoint(path: Path, params: Params, device: torch.device) -> tuple[int, np.ndarray]:
    """(training step, uint8 images (evaluate.snapshot_samples, C, H, W)) of one checkpoint, drawn like
    the plan's headline run (sampler, spacing, options, guidance w) but at evaluate.snapshot_steps steps,
    from the first seeds of the main samples (a conditional model: their classes too)."""
    trained = TrainedDiffusion.load(path, device)
    cfg, count = params.sample, params.evaluate.snapshot_samples
    num_classes = trained.model.num_classes
    # Searched grids exist for the final model only: snapshots take the first closed-form spacing (uniform if none).
    closed_form = tuple(s for s in cfg.spacing if s != SEARCHED) or (DEFAULT_SPACING,)
    plan = build_plan(dataclasses.replace(cfg, spacing=closed_form), conditional=bool(num_classes))
    run = dataclasses.replace(plan[0], steps=params.evaluate.snapshot_steps)
    labels = class_labels(count, num_classes) if num_classes else None
    batch = min(cfg.batch_size, count)
    network = trained.sampling_network(cfg.precision, False, cfg.channels_last, batch, planned_calls(count, batch, run.nfe))  # short: never compiled
    seeds = image_seeds(cfg.seed, 0, count)
    return trained.step, draw_images(trained, network, run, seeds, labels, clip_x0=cfg.clip_x0, batch_size=cfg.batch_size, device=device)
