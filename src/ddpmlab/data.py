"""Dataset sources -> uint8 image arrays (N, C, H, W) + int64 labels; splits; normalisation.

Prepared data is plain uint8 so it is exact, small and identical on every machine; the
conversion to the model's [-1, 1] float range happens on the device (``to_model_range``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, images=self.images, labels=self.labels)

    @classmethod
    def load(cls, path: str | Path) -> ImageSet:
        with np.load(path) as f:
            return cls(images=f["images"], labels=f["labels"].astype(np.int64))


def load_digits(image_size: int) -> ImageSet:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), resized.

    The raw pixels are integers 0..16; they are scaled to [0, 1] and resized with
    antialiased bilinear interpolation, then quantised to uint8.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images).float().div(16.0)[:, None]  # (N, 1, 8, 8)
    if image_size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    images = pixels.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return ImageSet(images=images, labels=bunch.target.astype(np.int64))


SOURCES = {"digits": load_digits}


def load_source(name: str, image_size: int) -> ImageSet:
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; allowed: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](image_size)


def split(data: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Deterministic shuffled train/test split; the same seed always gives the same split."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = max(1, round(len(data) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return ImageSet(data.images[train], data.labels[train]), ImageSet(data.images[test], data.labels[test])


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the data range DDPM assumes, sec. 3.3)."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped (the inverse of ``to_model_range``)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
