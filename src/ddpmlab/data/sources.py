"""Dataset sources -> :class:`ImageSet` at the configured size and channels; train/test splits; pixel stats.

Each source is one loader in :data:`LOADERS` (keys equal ``data.source_names.SOURCES``): scikit-learn's
bundled digits here, MNIST / Fashion-MNIST / CIFAR-10 in ``standard_datasets`` and any directory
of images in ``image_folder``, each imported only when its source is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ddpmlab.data.image_set import ImageSet, SourceData, chunks


class SourceSettings(Protocol):
    """What a loader reads of the ``data`` section (``config.DataConfig`` has these fields; data sits below config)."""

    source: str
    root: str
    image_size: int
    channels: int | None
    skip_bad: bool


def _resize_unit(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, C, size, size) uint8: center square crop, antialiased bilinear resize."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, channels, H, W): RGB -> L with the ITU-R 601-2 luma weights (as Pillow), L -> RGB by repetition."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot convert {c} channels to {channels}; allowed: 1 or 3")


def fit_images(images: np.ndarray, size: int, channels: int | None) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, channels or C, size, size) uint8, converted chunk by chunk.

    Returns ``images`` itself when nothing changes, so native-size data is never copied.
    """
    n, c, h, w = images.shape
    channels = channels or c
    if (h, w) == (size, size) and channels == c:
        return images
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for part in chunks(n):
        x = torch.from_numpy(images[part]).float().div(255.0)
        out[part] = _resize_unit(convert_channels(x, channels), size).numpy()
    return out


def load_digits(image_size: int, channels: int | None) -> SourceData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), resized.

    The raw pixels are integers 0..16; they are scaled to [0, 1] and resized with
    antialiased bilinear interpolation, then quantised to uint8.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images).float().div(16.0)[:, None]  # (N, 1, 8, 8)
    images = _resize_unit(convert_channels(pixels, channels or 1), image_size).numpy()
    classes = [str(d) for d in range(10)]
    return SourceData(ImageSet(images, bunch.target.astype(np.int64)), None, classes, {"package": "scikit-learn (bundled)"})


def _digits(cfg: SourceSettings) -> SourceData:
    return load_digits(cfg.image_size, cfg.channels)


def _folder(cfg: SourceSettings) -> SourceData:
    from ddpmlab.data.image_folder import load_folder

    return load_folder(Path(cfg.root), cfg.image_size, cfg.channels, skip_bad=cfg.skip_bad)


def _standard(cfg: SourceSettings) -> SourceData:
    from ddpmlab.data.standard_datasets import load_standard

    data = load_standard(cfg.source, Path(cfg.root))
    fit = lambda s: ImageSet(fit_images(s.images, cfg.image_size, cfg.channels), s.labels)
    return SourceData(fit(data.train), fit(data.test), data.classes, data.origin)


LOADERS: dict[str, Callable[[SourceSettings], SourceData]] = {
    "digits": _digits,
    "mnist": _standard,
    "fashion_mnist": _standard,
    "cifar10": _standard,
    "folder": _folder,
}


def load_source(cfg: SourceSettings) -> SourceData:
    """Load ``cfg.source`` at ``cfg.image_size`` x ``cfg.image_size`` with ``cfg.channels`` (None: the source's own)."""
    if cfg.source not in LOADERS:
        raise ValueError(f"unknown data source {cfg.source!r}; allowed: {', '.join(LOADERS)}")
    return LOADERS[cfg.source](cfg)


def split(data: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Deterministic shuffled train/test split; the same seed always gives the same split."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = max(1, round(len(data) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return ImageSet(data.images[train], data.labels[train]), ImageSet(data.images[test], data.labels[test])


def pixel_stats(*sets: ImageSet) -> dict[str, list[float]]:
    """Exact per-channel mean and std of pixel values in [0, 1], from 256-bin histograms built chunk by chunk
    (a float64 copy of CIFAR-10 would be 1.5 GB)."""
    channels = sets[0].images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for s in sets:
        for part in chunks(len(s)):
            block = s.images[part]
            for c in range(channels):
                counts[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * values**2).sum(1) / total - mean**2
    all_mean = float((counts * values).sum() / total.sum())
    all_var = float((counts * values**2).sum() / total.sum() - all_mean**2)
    return {
        "pixel_mean": round(all_mean, 6),
        "pixel_std": round(all_var**0.5, 6),
        "channel_mean": [round(float(m), 6) for m in mean],
        "channel_std": [round(float(v) ** 0.5, 6) for v in np.maximum(var, 0)],
    }


