"""What the sample stage writes per run: images, arrays and grids (the comparison figure is
``ddpmlab.reporting.figures.samples``).

Layout under the stage's output folder: ``<run.folder>/`` with ``images/*.png``, ``samples.npz``
(images, seeds, and the classes asked for), ``grid.png``, ``denoise_strip.png`` and, for
conditional models, ``class_grid.png``; at the top ``sampling.json`` and ``comparison.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmlab.data import images
from ddpmlab.data.image_set import to_uint8
from ddpmlab.sampling.trajectory import TrajectoryRecorder

COMPARISON_IMAGES = 8  # images per cell of the comparison figure (the same seeds in every cell)


def class_grid(samples: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = 10) -> np.ndarray:
    """(num_classes * per_class, C, H, W): row c holds the first images asked to be class c."""
    rows = []
    for c in range(num_classes):
        chosen = samples[labels == c][:per_class]
        rows.append(np.concatenate([chosen, np.zeros((per_class - len(chosen), *samples.shape[1:]), samples.dtype)]))
    return np.concatenate(rows)


def save_run(samples: np.ndarray, strip: TrajectoryRecorder, seeds: list[int], folder: Path, scale: int, labels: np.ndarray | None = None) -> None:
    """One run's files. samples: uint8 (N, C, H, W)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    extra = {} if labels is None else {"labels": labels}  # the class each image was asked to be
    np.savez_compressed(folder / "samples.npz", images=samples, seeds=np.asarray(seeds, dtype=np.int64), **extra)
    for i, image in enumerate(samples):
        images.save_png(image, folder / "images" / f"{i:06d}.png")
    images.save_png(images.upscale(images.grid(samples[:64], columns=8), scale), folder / "grid.png")
    if strip.count and strip.frames:
        frames = to_uint8(strip.strip()).numpy()
        images.save_png(images.upscale(images.grid(frames, columns=len(strip.frames)), scale), folder / "denoise_strip.png")
    if labels is not None:
        num_classes = int(labels.max()) + 1
        images.save_png(images.upscale(images.grid(class_grid(samples, labels, num_classes), columns=10), scale), folder / "class_grid.png")

