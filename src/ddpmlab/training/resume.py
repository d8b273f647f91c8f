"""Resumable training state on disk: which folder belongs to a run, and its rotating checkpoints.

A run's folder is named by a fingerprint of its training params, its data and the code that
trains it, so changed params or code never resume state written by something else. Inside it,
``step-N.pt`` files (``model.trained.save_training``) are kept newest first, at most ``keep``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from ddpmlab.model import checkpoint
from ddpmlab.model.trained import KIND


def fingerprint(training_params: dict, data_file: Path, code: Iterable[Path]) -> str:
    """16 hex digits over the training params, the data file's bytes and every file of ``code``."""
    digest = hashlib.sha256(json.dumps(training_params, sort_keys=True, default=list).encode())
    digest.update(data_file.read_bytes())
    for source in code:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def checkpoints_newest_first(folder: Path) -> list[Path]:
    """step-N.pt files by N, newest first (by number: names stop sorting by step past 7 digits)."""
    return sorted(folder.glob("step-*.pt"), key=lambda path: int(path.stem.removeprefix("step-")), reverse=True)


def latest_checkpoint(folder: Path, warn: Callable[[str], None]) -> tuple[dict | None, Path | None]:
    """The newest readable resumable checkpoint in ``folder``, loaded on the CPU (RNG states must
    stay there; the model and optimizer move their tensors themselves); an unreadable one is
    named through ``warn`` and skipped."""
    for path in checkpoints_newest_first(folder):
        try:
            return checkpoint.load(path, KIND, map_location="cpu"), path
        except (checkpoint.CheckpointError, OSError) as e:
            warn(f"warning: skipping unreadable checkpoint {path}: {e}")
    return None, None


def prune_checkpoints(folder: Path, keep: int) -> None:
    for path in checkpoints_newest_first(folder)[keep:]:
        path.unlink(missing_ok=True)
