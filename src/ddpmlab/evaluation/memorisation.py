"""Does the model copy its training set? Each generated image's nearest training image, read
against the same distance for held-out test images: real data the model never saw.

In two spaces: the feature extractor's (what FID sees) and raw pixels (what a person sees).
The test images set the scale: ``threshold`` is the 5th percentile of their nearest-training
distances, so held-out data has a copy rate of 5% by construction and a model that reproduces
training images scores far more; independent images score ~0. The median-distance ratio
(generated / test) is ~1 for a model that generalises like held-out data and falls towards 0
as it copies. Neither says anything about quality: noise is "original" too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpmlab.evaluation.neighbours import knn

COPY_QUANTILE = 0.05
SPACES = ("features", "pixels")
PANEL_PAIRS = 12  # closest generated images shown beside their training neighbours
HISTOGRAM_BINS = 30


def pixel_vectors(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, C * H * W) in [0, 1]."""
    return torch.from_numpy(images).flatten(1).float() / 255


def space_suffix(space: str) -> str:
    return "" if space == SPACES[0] else f"_{space}"


@dataclass(frozen=True)
class Baseline:
    """Held-out test images' nearest-training distances (N_test,) in one space."""

    distances: torch.Tensor

    @property
    def threshold(self) -> float:
        return float(torch.quantile(self.distances.double(), COPY_QUANTILE))

    @property
    def median(self) -> float:
        return float(self.distances.double().median())


def copy_scores(distances: torch.Tensor, baseline: Baseline) -> dict[str, float]:
    """copy_rate: fraction of ``distances`` (N,) below the baseline's threshold; nn_ratio: their
    median over the baseline's."""
    return {
        "copy_rate": float((distances < baseline.threshold).double().mean()),
        "nn_ratio": float(distances.double().median()) / baseline.median,
    }


@dataclass(frozen=True)
class Nearest:
    """Each image's nearest training image in each space: distances and indices, (N,) each."""

    distances: dict[str, torch.Tensor]
    indices: dict[str, torch.Tensor]


class Memorisation:
    """The training set in both spaces (M, D_space) and the test baseline of each space."""

    def __init__(self, train: dict[str, torch.Tensor], baselines: dict[str, Baseline], device: torch.device | None = None):
        if set(train) != set(SPACES) or set(baselines) != set(SPACES):
            raise ValueError(f"train and baselines must be given for {SPACES}")
        self.train, self.baselines, self.device = train, baselines, device

    def nearest(self, points: dict[str, torch.Tensor]) -> Nearest:
        """points: space -> (N, D_space) -> each point's nearest training image."""
        found = {space: knn(points[space], self.train[space], 1, device=self.device) for space in SPACES}
        return Nearest({s: n.distances[:, 0] for s, n in found.items()}, {s: n.indices[:, 0] for s, n in found.items()})

    def score(self, nearest: Nearest) -> dict[str, float]:
        """copy_rate, nn_ratio (feature space) and copy_rate_pixels, nn_ratio_pixels."""
        out = {}
        for space in SPACES:
            scores = copy_scores(nearest.distances[space], self.baselines[space])
            out.update({f"{name}{space_suffix(space)}": value for name, value in scores.items()})
        return out

    def copied(self, nearest: Nearest) -> dict[str, torch.Tensor]:
        """Per image (N,), bool: closer to a training image than the threshold, by score name
        (copy_rate, copy_rate_pixels); what the replicates vary, the threshold held fixed."""
        return {f"copy_rate{space_suffix(s)}": nearest.distances[s] < self.baselines[s].threshold for s in SPACES}

    def floor(self) -> dict[str, float]:
        """What the held-out test images themselves score: ~COPY_QUANTILE and exactly 1."""
        return self.score(Nearest({s: b.distances for s, b in self.baselines.items()}, {}))

    def summary(self, nearest: Nearest) -> dict:
        """For the report: the PANEL_PAIRS generated images closest to a training image (feature
        space) with their neighbours in both spaces, and histograms of both distance distributions."""
        order = nearest.distances["features"].argsort()[:PANEL_PAIRS]
        pairs = [
            {"generated": int(i), **{f"train{space_suffix(s)}": int(nearest.indices[s][i]) for s in SPACES},
             **{f"distance{space_suffix(s)}": round(float(nearest.distances[s][i]), 5) for s in SPACES}}
            for i in order
        ]  # fmt: skip
        histograms = {}
        for space in SPACES:
            generated, test = nearest.distances[space].double(), self.baselines[space].distances.double()
            edges = np.linspace(0, float(max(generated.max(), test.max())), HISTOGRAM_BINS + 1)
            histograms[space] = {
                "edges": [round(e, 5) for e in edges.tolist()],
                "generated": np.histogram(generated.numpy(), edges)[0].tolist(),
                "test": np.histogram(test.numpy(), edges)[0].tolist(),
                "threshold": round(self.baselines[space].threshold, 5),
            }
        return {"closest": pairs, "histograms": histograms}


def held_out_baselines(
    train: dict[str, torch.Tensor], test: dict[str, torch.Tensor], device: torch.device | None = None
) -> dict[str, Baseline]:
    """Each test image's nearest-training distance, per space: the expensive part (N_test x M), cached by the caller."""
    return {space: Baseline(knn(test[space], train[space], 1, device=device).distances[:, 0]) for space in SPACES}


def build(train_features: torch.Tensor, train_images: np.ndarray, test_features: torch.Tensor, test_images: np.ndarray,
          store=None, keys: dict[str, str] | None = None, device: torch.device | None = None) -> Memorisation:  # fmt: skip
    """The check for one training set; the test baselines come from ``store`` (FeatureCache.derived)
    when ``keys`` (split -> content key of its features) name them."""
    train = {"features": train_features, "pixels": pixel_vectors(train_images)}
    test = {"features": test_features, "pixels": pixel_vectors(test_images)}

    def compute() -> dict[str, torch.Tensor]:
        return {space: b.distances for space, b in held_out_baselines(train, test, device).items()}

    if store is None or keys is None:
        distances = compute()
    else:
        distances = store.derived(
            {"nearest_training_of": keys["test"], "training": keys["train"], "spaces": list(SPACES)}, compute
        )
    return Memorisation(train, {space: Baseline(distances[space]) for space in SPACES}, device)
