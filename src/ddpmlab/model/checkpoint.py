"""The only place that calls torch.save / torch.load (``tests/test_boundaries.py`` holds it so).

A checkpoint is a plain dict of tensors and Python primitives, loaded with
``weights_only=True`` so opening one never executes code. It carries the params it was
trained with, so sampling and evaluation need nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ddpmlab import __version__

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def save(payload: dict[str, Any], path: str | Path, kind: str) -> None:
    """Write atomically: a temporary file in the same folder, then a rename, so a crash
    mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two workers writing one cache entry never share it
    with open(tmp, "wb") as f:
        torch.save({"kind": kind, "format_version": FORMAT_VERSION, "ddpmlab_version": __version__, **payload}, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file under the real name
    os.replace(tmp, path)


def load(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, empty, foreign, or holding code (pickle.UnpicklingError): the file is untrusted input
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable ddpmlab checkpoint ({type(e).__name__}: {first_line})") from e
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} holds a {found!r} checkpoint, expected {kind!r}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')} (ddpmlab {payload.get('ddpmlab_version', 'unknown')}), "
            f"this ddpmlab {__version__} reads format {FORMAT_VERSION}: retrain it (dvc repro) or use the ddpmlab that wrote it"
        )
    return payload


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``module.load_state_dict`` with a one-line error instead of a shape-mismatch traceback when
    the weights were written for another configuration (edited params, another ddpmlab version)."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        detail = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(
            f"{path}: the {what} weights do not fit the network its params describe ({detail}). "
            "It was written by another configuration or ddpmlab version; retrain it (dvc repro)."
        ) from e
