"""Reference-set features cached on disk, keyed by the content they were computed from.

The key is a SHA-256 of the images' bytes, shape and dtype together with the extractor's
identity (name, layers, weights hash, torch-fidelity version). Changed data, a retrained
classifier or other weights give another key, so stale statistics can never be reused;
unchanged data is extracted once and shared by every experiment (the cache lives outside
the repository, like torch.hub's). Quantities derived from reference features (k-NN radii,
nearest-training distances) are cached the same way by :meth:`FeatureCache.derived`, keyed by
the reference keys they were computed from and the settings that shaped them. Entries are
written to a temporary file and renamed, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ddpmlab.evaluation.metrics import FeatureSet
from ddpmlab.model import checkpoint

CACHE_ENV = "DDPMLAB_CACHE"
CACHE_KIND = "feature_cache"


def default_cache_dir() -> Path:
    """$DDPMLAB_CACHE, else $XDG_CACHE_HOME/ddpmlab, else ~/.cache/ddpmlab; features live under features/."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpmlab"
    return root / "features"


def content_key(images: np.ndarray, identity: dict) -> str:
    """SHA-256 over the extractor identity and the exact image bytes (N, C, H, W uint8)."""
    digest = hashlib.sha256()
    header = {"extractor": identity, "shape": list(images.shape), "dtype": str(images.dtype)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = self.misses = 0  # feature sets
        self.derived_hits = self.derived_misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def features(self, images: np.ndarray, identity: dict, extract: Callable[[np.ndarray], FeatureSet]) -> tuple[FeatureSet, str]:
        """(features of ``images``, their key): from the cache, or extracted and stored."""
        key = content_key(images, identity)
        path = self.path(key)
        entry = self._load(path)
        if entry is not None and entry["key"] == key and len(entry["features"]) == len(images):
            self.hits += 1
            return FeatureSet(entry["features"], entry["logits"]), key
        self.misses += 1
        result = extract(images)
        self._store(path, {"key": key, "identity": identity, "features": result.features, "logits": result.logits})
        return result, key

    def derived(self, recipe: dict, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Tensors computed from cached inputs: ``recipe`` (JSON) names the inputs' keys and every
        setting the result depends on; equal recipes share one entry."""
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        path = self.root / "derived" / f"{key}.pt"
        entry = self._load(path)
        if entry is not None and entry["recipe"] == json.loads(json.dumps(recipe)):
            self.derived_hits += 1
            return entry["tensors"]
        self.derived_misses += 1
        tensors = compute()
        self._store(path, {"recipe": recipe, "tensors": tensors})
        return tensors

    @staticmethod
    def _load(path: Path) -> dict | None:
        """The entry at ``path``, or None when there is none or it is unreadable (a miss: it is recomputed)."""
        if not path.is_file():
            return None
        try:
            return checkpoint.load(path, CACHE_KIND)
        except checkpoint.CheckpointError:
            return None

    @staticmethod
    def _store(path: Path, entry: dict) -> None:
        checkpoint.save(entry, path, CACHE_KIND)  # atomic, with a per-process temporary name: parallel workers may race
