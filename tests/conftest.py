"""Shared fixtures: tiny params that run every code path in seconds, and an isolated MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Same keys as params.yaml, sized so the whole pipeline runs in seconds on a CPU.
TINY_OVERRIDES = {
    "T": 30,
    "data": {"image_size": 8},
    "model": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "norm_groups": 4},
    "train": {"steps": 4, "batch_size": 8, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 2},
    "sample": {"steps": [30, 5], "num_samples": 24, "batch_size": 16, "strip_images": 2, "strip_columns": 4},
    "classifier": {"epochs": 1},
    "evaluate": {"batch_size": 64, "kid_subset_size": 8, "nll_images": 12},
}


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


def tiny_params() -> dict:
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES)


def write_tiny_params(path: Path, **section_overrides: dict) -> Path:
    path.write_text(yaml.safe_dump(merge(tiny_params(), section_overrides), sort_keys=False))
    return path


def isolate_mlflow(monkeypatch: pytest.MonkeyPatch, folder: Path) -> str:
    """Point MLflow at a SQLite store in ``folder``; the project's own mlflow.db is never touched."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
