"""The sample stage's figure: the same seeds under every sampler and step count (samples/comparison.png,
which the report shows too). Kept apart from the report's figures: it is a DVC dep of the sample stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddpmlab.data import images
from ddpmlab.reporting.figures.style import plt, save_figure, show_image

if TYPE_CHECKING:
    from ddpmlab.sampling.plan import Run


def sampler_comparison_figure(firsts: dict[Run, np.ndarray], path: Path) -> None:
    """The same seeds under every (sampler, spacing) (rows) and step count (columns), each cell a
    strip of the first images; a figure with labelled axes so it stays readable in `dvc plots`."""
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
                show_image(ax, images.grid(cells[(line, n)], columns=len(cells[(line, n)]), padding=1))
            if i == 0:
                ax.set_title(f"{n} steps", fontsize=9)
            if j == 0:
                ax.set_ylabel(line[0] if line[1] == "uniform" else f"{line[0]}\n{line[1]}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("The same seeds under every sampler and step count", fontsize=10)
    save_figure(fig, path, dpi=100)
