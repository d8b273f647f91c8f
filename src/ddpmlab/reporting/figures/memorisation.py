"""The report's memorisation figures: the generated images closest to a training image beside their
nearest training images, and the nearest-training distance histograms. Each writes one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmlab.evaluation.memorisation import SPACES, space_suffix
from ddpmlab.reporting.figures.style import plt, save_figure, show_image


def memorisation_panel_figure(generated: np.ndarray, train: np.ndarray, pairs: list[dict], path: Path) -> None:
    """One column per pair: the generated image (top), its nearest training image in feature space
    and in pixel space (below), each with its distance. generated / train: (N, C, H, W) uint8."""
    fig, axes = plt.subplots(3, len(pairs), figsize=(1.25 * len(pairs), 4.4), squeeze=False)
    rows = [("generated", None), ("nearest train (features)", "features"), ("nearest train (pixels)", "pixels")]
    for col, pair in enumerate(pairs):
        shown = [generated[pair["generated"]], *(train[pair[f"train{space_suffix(s)}"]] for s in SPACES)]
        notes = [f"#{pair['generated']}", *(f"d={pair[f'distance{space_suffix(s)}']:.3g}" for s in SPACES)]
        for row, (image, note) in enumerate(zip(shown, notes)):
            ax = axes[row, col]
            show_image(ax, image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(note, fontsize=7)
            if col == 0:
                ax.set_ylabel(rows[row][0], fontsize=7)
    fig.suptitle("Generated images closest to a training image (feature space), with their nearest training images", fontsize=9)
    save_figure(fig, path)


def memorisation_histogram_figure(histograms: dict, path: Path) -> None:
    """Nearest-training distance of generated and held-out test images, per space, with the copy threshold."""
    fig, axes = plt.subplots(1, len(SPACES), figsize=(11, 3.6))
    for ax, space in zip(axes, SPACES):
        h = histograms[space]
        edges = np.array(h["edges"])
        for key, color in (("test", "tab:gray"), ("generated", "tab:blue")):
            counts = np.array(h[key], dtype=float)
            ax.stairs(counts / max(counts.sum(), 1), edges, color=color, linewidth=1.5, label=f"{key} images")
        ax.axvline(h["threshold"], color="tab:red", linestyle="--", label="copy threshold (test's 5th percentile)")
        ax.set(xlabel=f"distance to the nearest training image ({space})", ylabel="fraction of images", title=space)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
