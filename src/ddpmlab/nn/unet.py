"""The DDPM U-Net (Ho et al. 2020, sec. 4 and appendix B): (x_t, t) -> output of x's shape.

A PixelCNN++-style backbone: residual blocks with GroupNorm, SiLU, dropout and the timestep
embedding added in every block; self-attention at chosen levels; skip connections
from every down-path block to the up path. The network knows nothing about schedules:
``t`` is just a number to embed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddpmlab.nn import cpu_kernels
from ddpmlab.nn.unet_config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of (B,) timesteps -> (B, dim)  (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = cpu_kernels.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, as in the DDPM network."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = cpu_kernels.attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The residual (+ attention) blocks of one resolution on one path."""

    def __init__(self, blocks: list[ResBlock], attentions: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions)


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]). x: (B, in_channels, S, S) with S = image_size; t: (B,) -> (B, out_channels, S, S).

    out_channels defaults to in_channels; 2 * in_channels adds the variance interpolation
    of a learned-variance model (Improved DDPM) after the prediction.

    With ``config.conditional`` the network also takes class labels y: (B,) int64 in
    [0, num_classes]; label ``num_classes`` (``null_label``), also used when y is None, is the
    "no class" of classifier-free guidance (Ho & Salimans 2022), so one network learns
    eps(x, t, y) and eps(x, t) together. Its embedding is added to the timestep embedding.
    """

    def __init__(self, config: UNetConfig, in_channels: int, image_size: int, out_channels: int | None = None, num_classes: int = 0):
        super().__init__()
        self.config, self.in_channels, self.image_size = config, in_channels, image_size
        self.out_channels = out_channels or in_channels
        ch, groups, dropout = config.channels, config.norm_groups, config.dropout
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes if config.conditional else 0
        if config.conditional:
            if num_classes < 1:
                raise ValueError(f"model.conditional needs labelled data with at least 1 class, got num_classes={num_classes}")
            self.class_embedding = nn.Embedding(num_classes + 1, emb_dim)  # the last row is the null class
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        def attention(c: int, level: int) -> nn.Module:
            return SelfAttention(c, groups) if level in config.attention_levels else nn.Identity()

        skip_channels = [ch]
        current = ch
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(config.channel_mult):
            blocks, attns = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(current, ch * mult, emb_dim, dropout, groups))
                current = ch * mult
                attns.append(attention(current, level))
                skip_channels.append(current)
            self.down.append(Level(blocks, attns))
            last = level == len(config.channel_mult) - 1
            self.downsample.append(nn.Identity() if last else Downsample(current))
            if not last:
                skip_channels.append(current)

        self.mid_block1 = ResBlock(current, current, emb_dim, dropout, groups)
        self.mid_attention = SelfAttention(current, groups)
        self.mid_block2 = ResBlock(current, current, emb_dim, dropout, groups)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            blocks, attns = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResBlock(current + skip_channels.pop(), ch * mult, emb_dim, dropout, groups))
                current = ch * mult
                attns.append(attention(current, level))
            self.up.append(Level(blocks, attns))
            self.upsample.append(Upsample(current) if level > 0 else nn.Identity())

        self.norm_out = nn.GroupNorm(groups, current)
        self.conv_out = zero_init(nn.Conv2d(current, self.out_channels, 3, padding=1))

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.channels))
        if self.num_classes:
            labels = torch.full_like(t, self.null_label, dtype=torch.long) if y is None else y
            emb = emb + self.class_embedding(labels)
        elif y is not None:
            raise ValueError("class labels given to an unconditional network (model.conditional: false)")
        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attentions):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attentions):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
