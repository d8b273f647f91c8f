"""What the sample stage writes per run: images, arrays, grids, and the comparison figure.

Layout under the stage's output folder: ``<run.folder>/`` with ``images/*.png``, ``samples.npz``
(images, seeds, and the classes asked for), ``grid.png``, ``denoise_strip.png`` and, for
conditional models, ``class_grid.png``; at the top ``sampling.json`` and ``comparison.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmlab.data import images
from ddpmlab.data.image_set import to_uint8
from ddpmlab.sampling.plan import Run
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


def comparison_figure(firsts: dict[Run, np.ndarray], path: Path) -> None:
    """The same seeds under every (sampler, spacing) (rows) and step count (columns), each cell a
    strip of the first images; a figure with labelled axes so it stays readable in `dvc plots`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = list(dict.fromkeys((r.sampler, r.spacing) for r in firsts))
    steps = sorted({r.steps for r in firsts}, reverse=True)
    cells = {((r.sampler, r.spacing), r.steps): imgs for r, imgs in firsts.items()}
    fig, axes = plt.subplots(len(lines), len(steps), figsize=(2.6 * len(steps) + 1.2, 0.75 * len(lines) + 0.6), squeeze=False)
    for i, line in enumerate(lines):
        for j, n in enumerate(steps):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (line, n) in cells:
                strip = images.grid(cells[(line, n)], columns=len(cells[(line, n)]), padding=1).transpose(1, 2, 0)
                ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if i == 0:
                ax.set_title(f"{n} steps", fontsize=9)
            if j == 0:
                ax.set_ylabel(line[0] if line[1] == "uniform" else f"{line[0]}\n{line[1]}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("The same seeds under every sampler and step count", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
