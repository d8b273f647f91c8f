"""How fast the same computation runs: precision, memory format, compilation, fused optimizers.

Nothing here changes what DDPM computes. bf16 autocast runs convolutions and matmuls in
bfloat16 with fp32 master weights, fp32 optimizer state and an fp32 loss. Under CPU autocast,
GroupNorm and attention run in bf16 when their input is bf16 (checked on torch 2.15); the
sampler's x_t update is always fp32.
Which precision, memory format and compilation a run uses is an ``nn.execution.Execution``; ``auto``
is decided by timing the candidates (``nn.autotune``), not from CPU flags: bf16 units do not make
bf16 faster everywhere (an AVX512-BF16 Xeon ran the default network's bf16 1.3x slower than fp32).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn


def cpu_features() -> str:
    """The CPU's bf16-relevant instruction sets, for logs and benchmark headers."""
    found = [name for name, probe in (("AMX", torch.cpu._is_amx_tile_supported), ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported),
                                      ("AVX512", torch.cpu._is_avx512_supported)) if probe()]  # fmt: skip
    return ", ".join(found) or "no AVX512"


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure_backends(device: torch.device, tf32: bool) -> None:
    """TF32 matmuls and convolutions on Ampere+ GPUs (fp32 range, 10-bit mantissa); cuDNN autotuning."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def adamw(params: Iterator[nn.Parameter], device: torch.device, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one launch per step) on CPU and CUDA, the foreach kernel elsewhere."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused, foreach=None if fused else True)


def maybe_compile(model: nn.Module, enabled: bool) -> Callable:
    """``torch.compile`` the forward when asked; the module itself (and its state_dict keys) is untouched."""
    return torch.compile(model) if enabled else model


class InferenceNetwork(nn.Module):
    """A network prepared once for sampling: eval mode, weights pre-cast to ``dtype`` (not re-cast
    on every call as autocast would), optional channels_last and torch.compile.

    forward(x, t): x (B, C, H, W) fp32, t (B,) -> (B, C_out, H, W) fp32, so samplers keep their
    x_t arithmetic in fp32 whatever the network runs in.
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32, channels_last: bool = True, compile: bool = False):
        super().__init__()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype)  # a copy: the caller's fp32 weights stay as they are
        self.net = model.to(device, memory_format=fmt).eval().requires_grad_(False)
        self.device, self.dtype, self.memory_format = device, dtype, fmt
        self.execution_record = None  # how it was chosen (nn.inference_probe sets it)
        self._forward = maybe_compile(self.net, compile)
        for name in ("in_channels", "out_channels", "image_size", "config", "num_classes"):  # the UNet's shape attributes
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        extra = {} if y is None else {"y": y}  # class labels, for a conditional network only
        with autocast(self.device, self.dtype):  # casts the fp32 input and timestep embedding to the weights' bf16
            return self._forward(x, t, **extra).float()
