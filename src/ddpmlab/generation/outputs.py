"""What `ddpmlab generate` writes: one PNG per seed, a grid and generation.json, all or nothing.

The files go to a hidden folder beside ``--out`` and replace it in one rename at the end, so a
crash or Ctrl-C leaves the previous output whole, and no folder mixes two calls' images.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ddpmlab.data import images

GRID_IMAGES = 64


def image_name(seed: int) -> str:
    return f"{seed:06d}.png"


def check_destination(out: Path, overwrite: bool) -> None:
    """Before any work: refuse an existing non-empty ``out`` unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite to replace it")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A fresh folder that becomes ``out`` when the block succeeds (the old ``out`` is removed then)
    and vanishes when it fails."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_outputs(folder: Path, samples: np.ndarray, seeds: tuple[int, ...], record: dict[str, Any]) -> None:
    """samples: uint8 (N, C, H, W), image j from seeds[j]."""
    for seed, image in zip(seeds, samples):
        images.save_png(image, folder / image_name(seed))
    scale = images.display_scale(samples.shape[-1])
    images.save_png(images.upscale(images.grid(samples[:GRID_IMAGES], columns=8), scale), folder / "grid.png")
    (folder / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
