"""`ddpmlab generate`'s defaults, shared with the MLflow model's signature: a leaf module (sampler
option names only), so the train stage that logs the model never depends on the samplers' code."""

from __future__ import annotations

from typing import Any

from ddpmlab.sampling.catalog import SAMPLER_CARDS

DEFAULT_STEPS = 50  # params.yaml's headline step count; a model with a smaller T gets T


def default_steps(T: int) -> int:
    return min(DEFAULT_STEPS, T)


def option_fields() -> dict[str, Any]:
    """Every sampler option across the registry, name -> default (``eta``, ``variance``...): each is a
    flag of `ddpmlab generate` and a param of the MLflow model, so a new sampler's options need no edit there."""
    fields: dict[str, Any] = {}
    for card in SAMPLER_CARDS.values():
        fields.update(vars(card.options()))
    return fields


def default_settings(T: int) -> dict[str, Any]:
    """The settings a model with T diffusion steps is sampled with unless told otherwise: params.yaml's
    headline run (ddpm, uniform grid, 50 steps or T if fewer), the samplers' option defaults."""
    return {"sampler": "ddpm", "steps": default_steps(T), "spacing": "uniform", "guidance": 0.0, **option_fields(),
            "clip_x0": True, "precision": "auto", "channels_last": "auto", "batch_size": 500, "device": "auto"}  # fmt: skip
