"""The figures' shared matplotlib setup: the headless backend, chosen before pyplot is imported, and
the helpers every figure module uses (a colour per line, an image drawn pixel for pixel, saving)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in CI
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["colors", "plt", "save_figure", "show_image"]


def colors(n: int) -> list:
    """``n`` line colours from tab10, repeating after ten."""
    return [plt.get_cmap("tab10")(i % 10) for i in range(n)]


def show_image(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw a uint8 (C, H, W) image, C in {1, 3}, pixel for pixel (grey levels absolute, not stretched)."""
    hwc = image.transpose(1, 2, 0)
    ax.imshow(hwc[..., 0] if hwc.shape[-1] == 1 else hwc, cmap="gray", vmin=0, vmax=255, interpolation="nearest")


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
