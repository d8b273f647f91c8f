"""A trained DDPM as stored in its checkpoint: the EMA network, its process and its params."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.nn import acceleration
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training import checkpoint

if TYPE_CHECKING:  # the sampling stages load models without importing the training loop
    from ddpmlab.training.loop import TrainState

KIND = "ddpm"


def build_unet(model_params: dict[str, Any], in_channels: int, image_size: int, learn_variance: bool = False, num_classes: int = 0) -> UNet:
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in model_params.items()}
    return UNet(UNetConfig(**fields), in_channels, image_size, out_channels=in_channels * (2 if learn_variance else 1), num_classes=num_classes)


def learns_variance(training_params: dict[str, Any]) -> bool:
    return bool(training_params["train"].get("learn_variance", False))


def save_training(
    state: TrainState, training_params: dict[str, Any], in_channels: int, image_size: int, path: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """Everything to resume training or to sample: weights, EMA, optimizer, RNG, step, params,
    plus ``extra`` (e.g. the stage's log so far), all in one atomically written file."""
    payload = {**_shape(state.model, training_params, in_channels, image_size), **state.state_dict(), **(extra or {})}
    checkpoint.save(payload, path, KIND)


def save_snapshot(state: TrainState, training_params: dict[str, Any], in_channels: int, image_size: int, path: str | Path) -> None:
    """The EMA weights alone at the current step (what sampling needs, a fraction of the size); loads as TrainedDiffusion."""
    payload = {**_shape(state.model, training_params, in_channels, image_size), "ema": state.ema.model.state_dict(), "step": state.step}
    checkpoint.save(payload, path, KIND)


def _shape(model: torch.nn.Module, training_params: dict[str, Any], in_channels: int, image_size: int) -> dict[str, Any]:
    """What rebuilds the network: its params, input shape and (conditional models) class count."""
    return {"params": training_params, "in_channels": in_channels, "image_size": image_size, "num_classes": getattr(model, "num_classes", 0)}


@dataclass
class TrainedDiffusion:
    model: UNet  # EMA weights, eval mode
    process: DiffusionProcess
    params: dict[str, Any]  # the training params (Params.training_dict()) it was trained with
    step: int

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> TrainedDiffusion:
        payload = checkpoint.load(path, KIND)
        params = payload["params"]
        model = build_unet(params["model"], payload["in_channels"], payload["image_size"], learns_variance(params), payload.get("num_classes", 0))
        checkpoint.load_weights(model, payload["ema"], path, "EMA")
        process = DiffusionProcess.from_schedule(params["schedule"], params["T"])
        return cls(model.to(device, memory_format=torch.channels_last).eval(), process, params, int(payload["step"]))

    def sampling_network(self, precision: str = "fp32", compile: bool = False) -> acceleration.InferenceNetwork:
        """The EMA network prepared once for sampling (``sample.precision`` / ``sample.compile``)."""
        device = next(self.model.parameters()).device
        dtype = acceleration.resolve_precision(precision, device)
        return acceleration.InferenceNetwork(self.model, device, dtype, compile=compile)
