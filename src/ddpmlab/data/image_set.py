"""The one form images take between stages: uint8 arrays (N, C, H, W) with int64 labels.

Prepared data is plain uint8 so it is exact, small and identical on every machine; the
conversion to the model's [-1, 1] float range happens on the device (``to_model_range``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHUNK = 1024  # images converted at a time: bounds the float32 working memory to ~CHUNK x C x H x W x 4 bytes


class DataUnavailable(RuntimeError):
    """The source's files are missing, corrupt or unreadable; the message says where we looked and what to do."""


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


@dataclass
class SourceData:
    """What a source yields before the train/test split."""

    train: ImageSet
    test: ImageSet | None  # the source's official test split; None: prepare splits by data.test_fraction
    classes: list[str]  # class names, index = label
    origin: dict[str, Any] = field(default_factory=dict)  # where the files came from, how they were verified


def chunks(n: int, size: int | None = None) -> Iterator[slice]:
    """Slices of ``size`` (default :data:`CHUNK`, read at call time) covering range(n)."""
    size = size or CHUNK
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the data range DDPM assumes, sec. 3.3)."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped (the inverse of ``to_model_range``)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
