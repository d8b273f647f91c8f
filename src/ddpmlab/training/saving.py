"""What training writes: the full state (resumable; the train stage's model.pt) and EMA snapshots.

Both are checkpoints of the trained model's kind (``model.trained``), so sampling loads either
without importing the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpmlab.model import checkpoint
from ddpmlab.model.trained import KIND, model_header
from ddpmlab.training.loop import TrainState


def save_training(
    state: TrainState, training_params: dict[str, Any], in_channels: int, image_size: int, path: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """Everything to resume training or to sample: weights, EMA, optimizer, RNG, step, params,
    plus ``extra`` (e.g. the stage's log so far), all in one atomically written file."""
    payload = {**model_header(state.model, training_params, in_channels, image_size), **state.state_dict(), **(extra or {})}
    checkpoint.save(payload, path, KIND)


def save_snapshot(state: TrainState, training_params: dict[str, Any], in_channels: int, image_size: int, path: str | Path) -> None:
    """The EMA weights alone at the current step (what sampling needs, a fraction of the size); loads as TrainedDiffusion."""
    payload = {**model_header(state.model, training_params, in_channels, image_size), "ema": state.ema.model.state_dict(), "step": state.step}
    checkpoint.save(payload, path, KIND)
