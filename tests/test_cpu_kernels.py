"""The CPU attention and dropout paths against their definitions (closed forms and moments)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddpmlab.nn import cpu_kernels
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v in float64 (Vaswani et al. 2017, eq. 1)."""
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.mark.parametrize("tokens", [16, 64])
def test_bf16_attention_and_its_gradients_match_the_definition(tokens):
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, tokens, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = cpu_kernels.attention(q, k, v)
    assert out.shape == (4, tokens, 32) and out.dtype == torch.bfloat16
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q64, k64, v64)
    # bf16 keeps 8 significant bits: relative error ~2^-8 per rounding, a few roundings deep
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)
    grad_out = torch.randn_like(ref)
    out.backward(grad_out.bfloat16())
    ref.backward(grad_out)
    for ours, exact in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        scale = exact.abs().max()
        assert (ours.double() - exact).abs().max() <= 3e-2 * scale


def test_fp32_attention_is_pytorchs_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 10, 8) for _ in range(3))
    torch.testing.assert_close(cpu_kernels.attention(q, k, v), reference_attention(q, k, v).float(), atol=1e-5, rtol=1e-5)


def test_large_score_matrices_use_the_memory_bounded_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels.F, "scaled_dot_product_attention", lambda q, k, v: calls.append(q.shape) or q)
    monkeypatch.setattr(cpu_kernels, "MAX_SCORE_ELEMENTS", 2 * 8 * 8 - 1)
    q = torch.randn(2, 8, 4, dtype=torch.bfloat16)
    cpu_kernels.attention(q, q, q)
    assert calls == [(2, 1, 8, 4)]


def test_drop_probability_is_quantised_to_15_bits():
    assert cpu_kernels.quantised_drop_probability(0.1) == 3277 / 32768
    assert cpu_kernels.quantised_drop_probability(0.5) == 0.5
    assert abs(cpu_kernels.quantised_drop_probability(0.3) - 0.3) <= 2**-16


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_and_scale(p):
    torch.manual_seed(0)
    n = 2**20
    x = torch.rand(n) + 0.5
    out = cpu_kernels.dropout(x, p, training=True)
    drop = cpu_kernels.quantised_drop_probability(p)
    dropped = out == 0
    sigma = math.sqrt(drop * (1 - drop) / n)
    assert abs(dropped.double().mean().item() - drop) < 5 * sigma
    # every one of the four 16-bit lanes of a random word drops at the same rate (a lane with a
    # missing top bit would drop at twice the rate)
    for lane in range(4):
        assert abs(dropped[lane::4].double().mean().item() - drop) < 5 * 2 * sigma
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - drop), atol=0, rtol=1e-6)


def test_dropout_keeps_the_expectation_and_routes_gradients_through_the_mask():
    torch.manual_seed(1)
    x = torch.full((64, 32, 8, 8), 2.0, requires_grad=True)
    out = cpu_kernels.dropout(x, 0.2, training=True)
    assert abs(out.mean().item() - 2.0) < 5 * 2.0 * math.sqrt(0.2 / 0.8 / out.numel())
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach() / 2.0)


def test_dropout_on_channels_last_keeps_the_layout_and_is_reproducible():
    x = torch.randn(8, 16, 4, 4, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    torch.manual_seed(3)
    first = cpu_kernels.dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    second = cpu_kernels.dropout(x, 0.3, training=True)
    assert first.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(first, second)
    kept = first != 0
    torch.testing.assert_close(first[kept], (x[kept].float() / (1 - cpu_kernels.quantised_drop_probability(0.3))).bfloat16())


def test_dropout_edge_cases():
    x = torch.randn(5, 7)
    assert cpu_kernels.dropout(x, 0.5, training=False) is x
    assert cpu_kernels.dropout(x, 0.0, training=True) is x
    assert torch.equal(cpu_kernels.dropout(x, 1.0, training=True), torch.zeros_like(x))
    strided = torch.randn(6, 8)[:, ::2]  # neither contiguous nor channels_last: PyTorch's own dropout
    assert cpu_kernels.dropout(strided, 0.5, training=True).shape == (6, 4)
    with pytest.raises(ValueError, match="dropout probability"):
        cpu_kernels.Dropout(1.5)


def test_unet_trains_the_same_under_bf16_with_either_attention_kernel(monkeypatch):
    """The explicit kernel is a drop-in for PyTorch's: same loss and gradients up to bf16 rounding."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1), dropout=0.0, norm_groups=4), 1, 8)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 100, (4,))

    def loss_and_grads():
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(net(x, t).float(), x)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()])

    explicit = loss_and_grads()
    monkeypatch.setattr(cpu_kernels, "MAX_SCORE_ELEMENTS", 0)
    fused = loss_and_grads()
    assert explicit[0] == pytest.approx(fused[0], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(explicit[1], fused[1], dim=0) > 0.999
