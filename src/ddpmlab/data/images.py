"""Image grids and strips as uint8 arrays, and PNG writing. Pure array code plus Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def grid(images: np.ndarray, columns: int, padding: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile (N, C, H, W) uint8 images row by row into one (C, rows*(H+p)+p, columns*(W+p)+p) image."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    out = np.full((c, rows * (h + padding) + padding, columns * (w + padding) + padding), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        out[:, top : top + h, left : left + w] = images[i]
    return out


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of a (C, H, W) image so small images stay crisp when viewed."""
    return image.repeat(factor, axis=1).repeat(factor, axis=2)


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write a (C, H, W) uint8 image with C in {1, 3} as PNG."""
    if image.shape[0] == 1:
        Image.fromarray(image[0]).save(path)
    else:
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(path)


def display_scale(image_size: int, target: int = 64) -> int:
    """Integer zoom that shows a tile of ``image_size`` pixels at about ``target`` pixels."""
    return max(1, target // image_size)
