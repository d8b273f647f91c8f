"""ddpmlab.nn.cpu_kernels against the PyTorch ops they replace, side by side in one process.

Attention (forward + backward, and forward alone) against ``F.scaled_dot_product_attention``,
and dropout (forward) against ``F.dropout``, at the shapes of the default network (8x8 and 4x4
attention, 16x16 feature maps) and of the DDPM CIFAR-10 network (16x16 attention with 256
channels, 32x32 feature maps with 128 channels), batch 128, bf16. Prints ms per call and the
ratio PyTorch / ours (above 1: ours is faster).

    python benchmarks/kernels.py
"""

from __future__ import annotations

import statistics
import time

import click
import torch
import torch.nn.functional as F

from ddpmlab.nn import cpu_kernels

ATTENTION_SHAPES = {"default 4x4": (128, 16, 64), "default 8x8": (128, 64, 64), "cifar 16x16": (128, 256, 256)}
DROPOUT_SHAPES = {"default 16x16": (128, 64, 16, 16), "cifar 32x32": (128, 128, 32, 32)}


def ms_per_call(fn, calls: int, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def attention_pair(shape, backward: bool):
    q, k, v = (torch.randn(*shape, dtype=torch.bfloat16, requires_grad=backward) for _ in range(3))

    def run(attend):
        def call():
            with torch.set_grad_enabled(backward):
                out = attend(q, k, v)
                if backward:
                    out.backward(torch.ones_like(out))

        return call

    def pytorch(q, k, v):
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]

    return run(pytorch), run(cpu_kernels.attention)


@click.command(help=__doc__)
@click.option("--calls", default=10, show_default=True, help="calls per timed round")
@click.option("--rounds", default=3, show_default=True, help="timed rounds; the median counts")
def main(calls: int, rounds: int) -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, ms per call (median of {rounds} rounds of {calls})")
    print(f"{'op':34s} {'pytorch':>9s} {'ours':>9s} {'pytorch/ours':>13s}")
    for name, shape in ATTENTION_SHAPES.items():
        for backward in (True, False):
            pytorch, ours = attention_pair(shape, backward)
            a, b = ms_per_call(pytorch, calls, rounds), ms_per_call(ours, calls, rounds)
            label = f"attention {name} {'fwd+bwd' if backward else 'fwd'}"
            print(f"{label:34s} {a:9.2f} {b:9.2f} {a / b:12.2f}x")
    for name, shape in DROPOUT_SHAPES.items():
        x = torch.randn(*shape, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        a = ms_per_call(lambda x=x: F.dropout(x, 0.1, training=True), calls, rounds)
        b = ms_per_call(lambda x=x: cpu_kernels.dropout(x, 0.1, training=True), calls, rounds)
        print(f"{'dropout p=0.1 ' + name:34s} {a:9.2f} {b:9.2f} {a / b:12.2f}x")


if __name__ == "__main__":
    main()
