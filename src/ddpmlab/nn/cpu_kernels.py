"""Faster CPU paths for two U-Net operations: the same math as PyTorch's, with less work on a CPU.

Profiled on the 2-core AVX512-BF16 EPYC of benchmarks/RESULTS.md (torch 2.15, bf16 autocast,
batch 128), these two ops took a fifth of a training step of the default network:

- ``F.scaled_dot_product_attention`` picks the flash kernel for bf16 on CPU, and its backward is
  2.6x slower than plain matmul + softmax at 64 tokens (5.5x at 16 tokens, 1.6x at 256).
- ``nn.Dropout`` draws one Bernoulli variate per element (about 7 ns each); slicing each 64-bit
  random word into four 15-bit lanes needs a quarter of the generator calls.

Both fall back to PyTorch's own op on other devices, in fp32 attention (where the flash kernel is
the faster one) and under ``torch.compile`` (which fuses its own dropout and attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The explicit path materialises a (B, L, L) fp32 score matrix: cap it at 2^25 elements (128 MiB).
MAX_SCORE_ELEMENTS = 2**25

_LANE_BITS = 15  # int64 random_() draws from [0, 2^63): the top 16-bit lane has one bit fewer, so use 15 of each
_LANE_VALUES = 2**_LANE_BITS


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head softmax(q k^T / sqrt(d)) v for q, k, v: (B, L, d) -> (B, L, d)  (Vaswani et al. 2017, eq. 1).

    On CPU in bf16 the scores are two bf16 matmuls around an fp32 softmax; elsewhere it is
    ``F.scaled_dot_product_attention``.
    """
    batch, tokens, dim = q.shape
    explicit = q.device.type == "cpu" and q.dtype == torch.bfloat16 and batch * tokens * tokens <= MAX_SCORE_ELEMENTS
    if not explicit or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    scores = torch.baddbmm(torch.zeros((), dtype=q.dtype), q, k.transpose(1, 2), beta=0.0, alpha=dim**-0.5)
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.bmm(weights, v)


def quantised_drop_probability(p: float) -> float:
    """The drop probability the CPU mask realises: p rounded to a multiple of 2^-15 (0.1 -> 0.100006)."""
    return round(p * _LANE_VALUES) / _LANE_VALUES


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p).  x: any shape.

    On CPU the keep mask comes from 15-bit lanes of 64-bit random words, so p is realised as
    ``quantised_drop_probability(p)`` and the scale uses that value: E[output] = x exactly.
    The words come from torch's global generator, like ``nn.Dropout``'s, so runs stay reproducible.
    """
    if not training or p == 0.0:
        return x
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if x.device.type != "cpu" or not dense or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    drop = quantised_drop_probability(p)
    if drop >= 1.0:
        return torch.zeros_like(x)
    # A lane in [0, 2^15) below drop * 2^15 drops its element. An int16 tensor, not a Python int: 2x faster compare
    threshold = torch.tensor(int(drop * _LANE_VALUES), dtype=torch.int16)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()
    lanes = words.view(torch.int16)[: x.numel()].bitwise_and_(_LANE_VALUES - 1)
    keep = _in_memory_order_of(x, torch.ge(lanes, threshold))
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - drop))


def _in_memory_order_of(like: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """View a flat tensor as ``like``'s shape with ``like``'s strides order (NCHW or channels_last)."""
    if like.dim() == 4 and not like.is_contiguous():
        b, c, h, w = like.shape
        return flat.view(b, h, w, c).permute(0, 3, 1, 2)
    return flat.view(like.shape)


class Dropout(nn.Module):
    """``nn.Dropout`` through ``dropout`` above (no parameters, so checkpoints are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
