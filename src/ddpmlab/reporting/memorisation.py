"""The report's "Memorisation" section: copy rate per run next to held-out data, the generated
images closest to a training image beside that image, and both distance distributions.
Reads evaluation.json's ``memorisation`` record (:meth:`ddpmlab.evaluation.memorisation.Memorisation.summary`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ddpmlab.evaluation.memorisation import SPACES, space_suffix
from ddpmlab.reporting.document import Document
from ddpmlab.reporting.figures import plt, save_figure, show_image  # figures picks the headless backend first


def panel_figure(generated: np.ndarray, train: np.ndarray, pairs: list[dict], path: Path) -> None:
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


def histogram_figure(histograms: dict, path: Path) -> None:
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


def memorisation_section(
    doc: Document, rows: pd.DataFrame, record: dict, real: dict, generated: np.ndarray, train: np.ndarray, figures: Path
) -> None:
    """rows: steps.csv; record: evaluation.json's memorisation; real: the floors (the test images' own scores)."""
    doc.heading("Memorisation")
    doc.paragraph(
        "Does the model copy its training set? For every generated image, the distance to its nearest training image, in the "
        "feature extractor's space and in pixels, read against the same distance for the held-out test images. The copy rate is "
        f"the fraction of images closer to a training image than {record['quantile']:.0%} of test images are (so held-out data "
        "scores about that by construction, a copying model far more, unrelated images ~0); the distance ratio is the median "
        "distance over the test images' (1: as far from the training set as unseen real data; towards 0: copying). Neither "
        "measures quality."
    )
    table = [["held-out test images", "", f"{real['copy_rate']:.3f}", f"{real['copy_rate_pixels']:.3f}", 1.0, 1.0]]
    table += [[r.key, r.nfe, r.copy_rate, r.copy_rate_pixels, r.nn_ratio, r.nn_ratio_pixels] for r in rows.itertuples()]
    doc.table(
        ["run", "NFE", "copy rate (features)", "copy rate (pixels)", "distance ratio (features)", "distance ratio (pixels)"],
        table,
    )
    panel_figure(generated, train, record["closest"], figures / "memorisation_panel.png")
    doc.image(
        "figures/memorisation_panel.png",
        f"{record['run']}: the generated images nearest to a training image, each above that image",
    )
    histogram_figure(record["histograms"], figures / "memorisation_distances.png")
    doc.image(
        "figures/memorisation_distances.png",
        f"{record['run']}: distance to the nearest training image, generated vs held-out test images",
    )
