"""The U-Net's architecture as params.yaml's ``model`` section: a leaf module (no torch) that ``config`` reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetConfig:
    """Architecture knobs (the ``model`` section of params.yaml).

    The DDPM CIFAR-10 network is channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
    attention_levels=(1,), dropout=0.1, norm_groups=32 (35.7M parameters): attention at 16x16 of 32x32.
    Levels, not pixel sizes, so one config fits every image size (level i works at image_size / 2^i).
    """

    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    dropout: float = 0.1
    norm_groups: int = 8
    conditional: bool = False  # a class embedding joins the timestep embedding (classifier-free guidance)

    def resolutions(self, image_size: int) -> list[int]:
        """Feature-map side length at each level of the down path."""
        return [image_size // 2**level for level in range(len(self.channel_mult))]
