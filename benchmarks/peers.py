"""Peer networks of matched size for the speed benchmarks, all called as net(x, t) -> tensor.

diffusers' ``UNet2DModel`` is laid out block for block like ddpmlab's U-Net (same widths,
residual blocks per level, attention levels, GroupNorm groups, one attention head), so for
the DDPM CIFAR-10 configuration both have exactly 35,746,307 parameters. lucidrains'
``denoising-diffusion-pytorch`` Unet has its own layout (linear attention at every level,
full attention in the middle); its width is searched so its parameter count is the closest
to ours.
"""

from __future__ import annotations

import torch
from torch import nn

from ddpmlab.nn.unet import UNet, count_parameters
from ddpmlab.nn.unet_config import UNetConfig


class PeerAdapter(nn.Module):
    """Gives a peer ddpmlab's calling convention: forward(x, t) -> (B, C, H, W) tensor."""

    def __init__(self, net: nn.Module, unwrap: str | None = None):
        super().__init__()
        self.net, self.unwrap = net, unwrap

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x, t)
        return getattr(out, self.unwrap) if self.unwrap else out


def ours(cfg: UNetConfig, channels: int, image_size: int) -> nn.Module:
    return UNet(cfg, channels, image_size)


def diffusers_unet(cfg: UNetConfig, channels: int, image_size: int) -> nn.Module:
    from diffusers import UNet2DModel

    levels = range(len(cfg.channel_mult))
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(levels))
    net = UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(cfg.channels * m for m in cfg.channel_mult), layers_per_block=cfg.num_res_blocks,
        down_block_types=down, up_block_types=up, dropout=cfg.dropout, norm_num_groups=cfg.norm_groups,
        attention_head_dim=None,  # None: one head over all channels, as DDPM
    )  # fmt: skip
    return PeerAdapter(net, unwrap="sample")


def lucidrains_unet(cfg: UNetConfig, channels: int, image_size: int) -> nn.Module | None:
    """denoising-diffusion-pytorch's Unet with the width whose parameter count is closest to ours; None if not installed."""
    try:
        from denoising_diffusion_pytorch import Unet
    except ImportError:
        return None
    target = count_parameters(ours(cfg, channels, image_size))
    mults = tuple(cfg.channel_mult)

    def build(dim: int) -> nn.Module:
        return Unet(dim=dim, dim_mults=mults, channels=channels, dropout=cfg.dropout)

    low, high = 1, 64  # dim = 8 * k; the count grows with dim, so bisect on k
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if count_parameters(build(8 * mid)) < target else (low, mid)
    best = min((8 * low, 8 * high), key=lambda d: abs(count_parameters(build(d)) - target))
    return PeerAdapter(build(best))


PEERS = {"diffusers": diffusers_unet, "lucidrains": lucidrains_unet}
