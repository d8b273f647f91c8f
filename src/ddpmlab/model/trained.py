"""A trained DDPM as stored in its checkpoint: the EMA network, its process and its params."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.host import machine
from ddpmlab.host.choice_cache import ChoiceCache
from ddpmlab.model import checkpoint
from ddpmlab.nn import acceleration
from ddpmlab.nn.execution import Requested
from ddpmlab.nn.inference_probe import inference_network
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig

KIND = "ddpm"


def build_unet(model_params: dict[str, Any], in_channels: int, image_size: int, learn_variance: bool = False, num_classes: int = 0) -> UNet:
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in model_params.items()}
    return UNet(UNetConfig(**fields), in_channels, image_size, out_channels=in_channels * (2 if learn_variance else 1), num_classes=num_classes)


def learns_variance(training_params: dict[str, Any]) -> bool:
    return bool(training_params["train"].get("learn_variance", False))


def model_header(model: torch.nn.Module, training_params: dict[str, Any], in_channels: int, image_size: int) -> dict[str, Any]:
    """What rebuilds the network from a checkpoint: its params, input shape and (conditional models) class count."""
    return {"params": training_params, "in_channels": in_channels, "image_size": image_size, "num_classes": getattr(model, "num_classes", 0)}


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint says about its model without building the network: enough to check a
    sampling request (steps against T, classes, learned variance) before any expensive work."""

    params: dict[str, Any]  # the training params (Params.training_dict())
    in_channels: int
    image_size: int
    num_classes: int  # 0: unconditional
    step: int  # training steps behind the weights

    @property
    def T(self) -> int:
        return int(self.params["T"])

    @property
    def learns_variance(self) -> bool:
        return learns_variance(self.params)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def summary(self) -> dict[str, Any]:
        """The params that define the model, flat: what generate's JSON and the registry's tags record
        (a snapshot's own step is ``step``, recorded beside it)."""
        data, train = self.params["data"], self.params["train"]
        return {"schedule": self.params["schedule"], "T": self.T, "objective": self.params["objective"], "data.source": data["source"],
                "data.image_size": self.image_size, "channels": self.in_channels, "num_classes": self.num_classes,
                "train.steps": train["steps"], "train.seed": train["seed"]}  # fmt: skip

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ModelInfo:
        return cls(payload["params"], int(payload["in_channels"]), int(payload["image_size"]), int(payload.get("num_classes", 0)), int(payload["step"]))


def read_checkpoint(path: str | Path) -> tuple[ModelInfo, dict[str, Any]]:
    """(what the model is, the checkpoint's payload): the file read once, no network built."""
    payload = checkpoint.load(path, KIND)
    return ModelInfo.from_payload(payload), payload


def export_for_sampling(source: str | Path, destination: str | Path) -> None:
    """Write the EMA weights of checkpoint ``source`` (model.pt, or a snapshot) with what rebuilds
    the network, and nothing for resuming (optimizer, RNG, log): what a registered model carries.
    The tensors are copied unchanged, so the weights stay bit-identical."""
    payload = checkpoint.load(source, KIND)
    kept = {k: payload[k] for k in ("params", "in_channels", "image_size", "ema", "step")}
    checkpoint.save({**kept, "num_classes": payload.get("num_classes", 0)}, destination, KIND)


@dataclass
class TrainedDiffusion:
    model: UNet  # EMA weights, eval mode
    process: DiffusionProcess
    params: dict[str, Any]  # the training params (Params.training_dict()) it was trained with
    step: int

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> TrainedDiffusion:
        info, payload = read_checkpoint(path)
        return cls.from_payload(info, payload, device, path)

    @classmethod
    def from_payload(cls, info: ModelInfo, payload: dict[str, Any], device: torch.device, path: str | Path = "checkpoint") -> TrainedDiffusion:
        """The network of a checkpoint already read (:func:`read_checkpoint`)."""
        model = build_unet(info.params["model"], info.in_channels, info.image_size, info.learns_variance, info.num_classes)
        checkpoint.load_weights(model, payload["ema"], path, "EMA")
        process = DiffusionProcess.from_schedule(info.params["schedule"], info.T)
        return cls(model.to(device, memory_format=torch.channels_last).eval(), process, info.params, info.step)

    def sampling_network(
        self, precision: str = "auto", compile: bool | str = "auto", channels_last: bool | str = "auto", batch_size: int = 500,
        planned_calls: int | None = None,
    ) -> acceleration.InferenceNetwork:  # fmt: skip
        """The EMA network prepared once for sampling batches of ``batch_size`` (``sample.precision``, ``sample.channels_last``,
        ``sample.compile``; ``auto`` ones timed on this machine, ``nn.inference_probe``); ``planned_calls``: how many
        network calls the caller will make, if known. Its ``execution_record`` says how it runs."""
        device = next(self.model.parameters()).device
        requested = Requested(precision, channels_last, compile)
        return inference_network(self.model, device, requested, batch_size, planned_calls, identity=machine.identity(device), cache=ChoiceCache())
