"""Where the GPU time of one ddpmlab CIFAR-10 training step goes (companion to gpu_train.py).

For each precision configuration, builds the same training step as gpu_train.py (``Trainer``), warms
it up, then profiles ``--steps`` steps with torch.profiler and prints: wall time per step, the summed
GPU kernel time per step (how busy the GPU is; wall >> kernels means the host or launches limit the
step), the kernel time grouped into coarse classes, and the top kernels.

    PYTHONPATH=src:benchmarks python benchmarks/gpu_profile.py --configs tf32,bf16
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

import click
import torch
from gpu_train import Trainer, set_tf32, sync
from torch.profiler import ProfilerActivity, profile

from ddpmlab.core.diffusion import DiffusionProcess

CLASSES = [  # first match wins; patterns are searched in lower-cased kernel names
    ("attention", r"fmha|flash|attention|softmax"),
    ("group_norm", r"group_norm|groupnorm|rowwisemoments|compute_stat|gn_"),
    ("conv/gemm", r"conv|gemm|xmma|cutlass|sm90|sm80|cudnn|implicit|dgrad|wgrad|fprop|nhwc|nchw|cublas"),
    ("optimizer/ema/clip", r"adam|foreach|multi_tensor|lerp|norm_kernel|reduce_kernel.*norm"),
    ("layout copies", r"copy|transpose|permute|contiguous"),
    ("elementwise/other", r"."),
]


def classify(name: str) -> str:
    low = name.lower()
    return next(label for label, pattern in CLASSES if re.search(pattern, low))


@click.command()
@click.option("--device", default="cuda")
@click.option("--batch", default=128, show_default=True)
@click.option("--configs", default="tf32,bf16", show_default=True)
@click.option("--model", default="ours", show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--top", default=20, show_default=True)
@click.option("--small", is_flag=True)
def main(device, batch, configs, model, steps, top, small):
    device = torch.device(device)
    torch.backends.cudnn.benchmark = True
    process = DiffusionProcess.from_schedule("linear", 1000)
    images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, device=device)
    for config in configs.split(","):
        set_tf32(config != "fp32")
        bf16, cl = config.startswith("bf16"), config in ("bf16", "bf16-compile")
        tr = Trainer(model, small, device, batch, bf16, cl, config == "bf16-compile", images, process)
        for _ in range(10):
            tr.step()
        sync(device)
        start = time.perf_counter()
        for _ in range(20):
            tr.step()
        sync(device)
        wall = (time.perf_counter() - start) / 20
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                tr.step()
            sync(device)
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(e.self_device_time_total for e in kernels) / steps / 1e3  # ms per step
        print(f"\n== {model} {config}, batch {batch}: wall {wall * 1e3:.1f} ms/step ({batch / wall:.0f} img/s, unprofiled), "
              f"GPU kernels {total:.1f} ms/step ({100 * total / (wall * 1e3):.0f}% of wall) ==")
        groups = defaultdict(float)
        for e in kernels:
            groups[classify(e.key)] += e.self_device_time_total / steps / 1e3
        for label, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {label:20s} {ms:7.2f} ms  {100 * ms / max(total, 1e-9):5.1f}%")
        print(f"  top {top} kernels (ms/step, calls/step):")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
            print(f"    {e.self_device_time_total / steps / 1e3:7.2f}  {e.count / steps:5.0f}  [{classify(e.key)}] {e.key[:110]}")
        del tr
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
