"""The only place that calls torch.save / torch.load.

A checkpoint is a plain dict of tensors and Python primitives, loaded with
``weights_only=True`` so opening one never executes code. It carries the params it was
trained with, so sampling and evaluation need nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def save(payload: dict[str, Any], path: str | Path, kind: str) -> None:
    """Write atomically: a temporary file in the same folder, then a rename, so a crash
    mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"kind": kind, "format_version": FORMAT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')}, this ddpmlab reads {FORMAT_VERSION}"
        )
    return payload
