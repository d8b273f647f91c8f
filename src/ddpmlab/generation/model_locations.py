"""Where `ddpmlab generate --model` finds a model: a local folder or file, an MLflow run, or the
MLflow model registry. Local models need no mlflow."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SourceError(LookupError):
    """--model names nothing loadable; the message says what was looked for."""


@dataclass
class ModelSource:
    given: str  # --model as typed
    checkpoint: Path  # the weights file, local (downloaded into a temporary folder for MLflow sources)
    described: dict[str, Any] = field(default_factory=dict)  # run id, registered name, version, aliases, path


def pyfunc_checkpoint(model_dir: Path) -> Path:
    """The weights file inside an MLflow model folder (ddpmlab's pyfunc: its artifact ``checkpoint``)."""
    import yaml

    spec = yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
    try:
        relative = spec["flavors"]["python_function"]["artifacts"]["checkpoint"]["path"]
    except (KeyError, TypeError) as e:
        raise SourceError(f"{model_dir} is an MLflow model, but not one ddpmlab logged (no artifact 'checkpoint')") from e
    return model_dir / relative


def local_checkpoint(path: Path) -> Path:
    """A checkpoint file itself, a folder with model.pt (the train stage's models/ddpm), or an MLflow
    model folder (downloaded by hand)."""
    if path.is_file():
        return path
    if (path / "model.pt").is_file():
        return path / "model.pt"
    if (path / "MLmodel").is_file():
        return pyfunc_checkpoint(path)
    raise SourceError(f"--model {path}: the folder has neither model.pt (the train stage's output) nor an MLmodel file")


@contextmanager
def open_source(given: str) -> Iterator[ModelSource]:
    """The model ``given`` names; MLflow downloads live in a temporary folder until the block ends."""
    path = Path(given).expanduser()
    if path.exists():
        yield ModelSource(given, local_checkpoint(path), {"path": str(path.resolve())})
        return
    if not (given.startswith(("models:/", "runs:/")) or len(given) == 32):
        raise SourceError(f"--model {given!r}: no such folder or file, and not an MLflow run id (32 hex digits) or a models:/ URI")
    from ddpmlab.pipeline.model_registry import ModelNotFound, download  # mlflow only where a model lives in MLflow
    from ddpmlab.pipeline.tracking import TrackingError

    with tempfile.TemporaryDirectory(prefix="ddpmlab-model-") as tmp:
        try:
            downloaded, described = download(given, Path(tmp))
        except (ModelNotFound, TrackingError) as e:
            raise SourceError(f"--model {given}: {e}") from e
        yield ModelSource(given, local_checkpoint(downloaded), described)
