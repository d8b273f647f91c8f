"""The report's "Memorisation" section: copy rate per run next to held-out data, the generated
images closest to a training image beside that image, and both distance distributions.
Reads evaluation.json's ``memorisation`` record (:meth:`ddpmlab.evaluation.memorisation.Memorisation.summary`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ddpmlab.reporting.document import Document
from ddpmlab.reporting.figures.memorisation import memorisation_histogram_figure, memorisation_panel_figure


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
    memorisation_panel_figure(generated, train, record["closest"], figures / "memorisation_panel.png")
    doc.image(
        "figures/memorisation_panel.png",
        f"{record['run']}: the generated images nearest to a training image, each above that image",
    )
    memorisation_histogram_figure(record["histograms"], figures / "memorisation_distances.png")
    doc.image(
        "figures/memorisation_distances.png",
        f"{record['run']}: distance to the nearest training image, generated vs held-out test images",
    )
