"""Training and sampling speed of ddpmlab's U-Net against peers of matched size, side by side.

Sizes (both always reported):
  default  the network and resolution of params.yaml (model, data.image_size, the data's channels,
           train.batch_size)
  cifar    the DDPM CIFAR-10 network (Ho et al. 2020, appendix B: 35.7M parameters), 32x32 RGB, batch 128

Every network, ours and the peers, trains through the same loop, ``ddpmlab.training.loop.train``
(device-resident uint8 data, t and noise, eps-prediction L_simple, clip, fused AdamW, EMA),
in each speed configuration below; a peer's figure is its best configuration, so no peer is
handicapped by a setting that is slow for it. Sampling is one network evaluation per image
(``acceleration.InferenceNetwork``: eval mode, weights pre-cast). Peers: diffusers'
``UNet2DModel`` (block-for-block the same layout) and lucidrains' ``denoising-diffusion-pytorch``
``Unet`` if installed. Rounds alternate between networks in one process; the median round counts.

Training FLOPs per image are counted with ``torch.utils.flop_counter`` on ours (forward + backward);
MFU is achieved FLOP/s over the bf16 and fp32 matmul peaks measured in the same run.

    python benchmarks/speed.py                 # both sizes, peers, scaling table
    python benchmarks/speed.py --json          # ... and a last line of JSON
    python benchmarks/speed.py --quick         # few iterations (a smoke test, not figures to quote)
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch
import yaml
from peers import PEERS, ours
from torch.utils.flop_counter import FlopCounterMode

from ddpmlab.config import Params, TrainConfig
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.host import machine
from ddpmlab.host.choice_cache import ChoiceCache
from ddpmlab.host.machine import cpu_model
from ddpmlab.nn.acceleration import InferenceNetwork, cpu_features
from ddpmlab.nn.execution import Execution, Requested
from ddpmlab.nn.inference_probe import inference_network
from ddpmlab.nn.unet import count_parameters
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training.execution_probe import training_execution
from ddpmlab.training.loop import new_train_state, train

CIFAR = UNetConfig(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1, norm_groups=32)
# name -> (precision, channels_last, compile)
SPEED_CONFIGS = {
    "fp32-nchw": ("fp32", False, False),
    "fp32": ("fp32", True, False),
    "bf16-nchw": ("bf16", False, False),
    "bf16": ("bf16", True, False),
    "bf16-nchw-compile": ("bf16", False, True),
    "bf16-compile": ("bf16", True, True),
}


@dataclasses.dataclass
class Size:
    name: str
    model: UNetConfig
    channels: int
    image_size: int
    batch: int


def default_size(params_path: Path) -> Size:
    params = Params.from_dict(yaml.safe_load(params_path.read_text()))
    channels = params.data.channels or (3 if params.data.source in ("cifar10", "folder") else 1)
    return Size("default", params.model, channels, params.data.image_size, params.train.batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, iters: int = 10) -> float:
    """Best FLOP/s of an n x n x n matmul over a few rounds."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = 0.0
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


def training_flops_per_image(size: Size, device: torch.device) -> float:
    net = ours(size.model, size.channels, size.image_size).to(device)
    x = torch.randn(2, size.channels, size.image_size, size.image_size, device=device)
    t = torch.randint(0, 1000, (2,), device=device)
    with FlopCounterMode(display=False) as counter:
        net(x, t).square().mean().backward()
    return counter.get_total_flops() / 2


def sampling_flops_per_image(size: Size, device: torch.device) -> float:
    net = ours(size.model, size.channels, size.image_size).to(device)
    x = torch.randn(2, size.channels, size.image_size, size.image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.randint(0, 1000, (2,), device=device))
    return counter.get_total_flops() / 2


class TrainRunner:
    """One network training through ddpmlab.training.loop.train in one speed configuration."""

    def __init__(self, build, size: Size, config: str, device: torch.device, images: torch.Tensor, process: DiffusionProcess):
        precision, channels_last, compile_ = SPEED_CONFIGS[config]
        self.cfg = TrainConfig(
            steps=0, batch_size=size.batch, lr=2e-4, warmup_steps=1, log_every=10**9, checkpoint_every=10**9,
            precision=precision, channels_last=channels_last, compile=compile_,
        )  # fmt: skip
        self.state = new_train_state(build, self.cfg, seed=0, device=device)
        self.images, self.process = images, process

    def __call__(self, steps: int) -> None:
        self.cfg = dataclasses.replace(self.cfg, steps=self.state.step + steps)
        train(self.state, self.process, self.images, self.cfg)


class SampleRunner:
    def __init__(self, build, size: Size, config: str, device: torch.device, batch: int):
        precision, channels_last, compile_ = SPEED_CONFIGS[config]
        self.net = InferenceNetwork(build(), device, Execution(precision, channels_last).dtype, channels_last, compile_)
        self.x = torch.randn(batch, size.channels, size.image_size, size.image_size, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device)

    def __call__(self, calls: int) -> None:
        with torch.inference_mode():
            for _ in range(calls):
                self.net(self.x, self.t)


def measure(runners: dict, images_per_call: int, iters: int, rounds: int, device: torch.device) -> dict[str, dict]:
    """Warm up each runner (compilation, allocator), then time them round-robin; median images/s."""
    rows = {}
    for name, run in runners.items():
        start = time.perf_counter()
        run(1)
        sync(device)
        rows[name] = {"first_s": time.perf_counter() - start, "rates": []}
    for _ in range(rounds):
        for name, run in runners.items():
            sync(device)
            start = time.perf_counter()
            run(iters)
            sync(device)
            rows[name]["rates"].append(images_per_call * iters / (time.perf_counter() - start))
    for row in rows.values():
        row["median"] = statistics.median(row["rates"])
    return rows


def builders(size: Size, peers: list[str]) -> dict:
    out = {"ours": lambda: ours(size.model, size.channels, size.image_size)}
    for name in peers:
        probe = PEERS[name](size.model, size.channels, size.image_size)
        if probe is None:
            print(f"  {name}: not installed, skipped")
            continue
        out[name] = lambda name=name: PEERS[name](size.model, size.channels, size.image_size)
    return out


def bench_size(size: Size, device, peers, configs, iters, rounds, sample_batch, peaks) -> dict:
    print(f"\n=== {size.name}: {size.channels}x{size.image_size}x{size.image_size}, batch {size.batch} ===", flush=True)
    nets = builders(size, peers)
    counts = {name: count_parameters(build()) for name, build in nets.items()}
    for name, count in counts.items():
        print(f"  parameters {name:10s} {count:>12,} ({count / counts['ours']:.3f}x ours)")
    if "diffusers" in counts:
        assert abs(counts["diffusers"] / counts["ours"] - 1) < 0.10, "the diffusers peer must be within 10% of ours"
    train_flops, sample_flops = training_flops_per_image(size, device), sampling_flops_per_image(size, device)
    print(f"  ours: {train_flops / 1e9:.3f} GFLOP per training image, {sample_flops / 1e9:.3f} per network evaluation")
    process = DiffusionProcess.from_schedule("linear", 1000)
    images = torch.randint(0, 256, (4096, size.channels, size.image_size, size.image_size), dtype=torch.uint8, device=device)

    train_rows, sample_rows = {}, {}
    for config in configs:
        print(f"  train {config} ...", flush=True)
        try:
            runners = {name: TrainRunner(build, size, config, device, images, process) for name, build in nets.items()}
            train_rows[config] = measure(runners, size.batch, iters, rounds, device)
        except Exception as exc:  # noqa: BLE001  one failing configuration (e.g. compile) must not lose the rest
            print(f"  !! train {config} failed: {type(exc).__name__}: {exc}")
            continue
        for name, row in train_rows[config].items():
            print(f"    {name:10s} {row['median']:9.1f} img/s  (rounds {', '.join(f'{r:.1f}' for r in row['rates'])}; first call {row['first_s']:.1f}s)")
        del runners
    sample_iters = max(2, iters * 2)
    for config in configs:
        print(f"  sample {config} ...", flush=True)
        try:
            runners = {name: SampleRunner(build, size, config, device, sample_batch) for name, build in nets.items()}
            sample_rows[config] = measure(runners, sample_batch, sample_iters, rounds, device)
        except Exception as exc:  # noqa: BLE001
            print(f"  !! sample {config} failed: {type(exc).__name__}: {exc}")
            continue
        for name, row in sample_rows[config].items():
            print(f"    {name:10s} {row['median']:9.1f} img/s")
        del runners

    def best(rows: dict, name: str) -> tuple[str, float]:
        scored = {c: r[name]["median"] for c, r in rows.items() if name in r}
        top = max(scored, key=scored.get)
        return top, scored[top]

    result = {"parameters": counts, "train_gflop_per_image": train_flops / 1e9, "sample_gflop_per_image": sample_flops / 1e9}
    for name in nets:
        train_cfg, train_rate = best(train_rows, name)
        sample_cfg, sample_rate = best(sample_rows, name)
        result[name] = {"train_img_s": train_rate, "train_config": train_cfg, "sample_img_s": sample_rate, "sample_config": sample_cfg}
    ours_best = result["ours"]
    ours_best["train_mfu_bf16"] = ours_best["train_img_s"] * train_flops / peaks["bf16"]
    ours_best["train_mfu_fp32"] = ours_best["train_img_s"] * train_flops / peaks["fp32"]
    ours_best["sample_mfu_bf16"] = ours_best["sample_img_s"] * sample_flops / peaks["bf16"]
    for name in nets:
        if name != "ours":
            result[f"train_ratio_{name}"] = ours_best["train_img_s"] / result[name]["train_img_s"]
            result[f"sample_ratio_{name}"] = ours_best["sample_img_s"] / result[name]["sample_img_s"]
    if "diffusers" in nets:
        result["train_ratio"], result["sample_ratio"] = result["train_ratio_diffusers"], result["sample_ratio_diffusers"]
    result["train_mfu_bf16"] = ours_best["train_mfu_bf16"]
    result["by_config"] = {
        "train": {c: {n: r["median"] for n, r in rows.items()} for c, rows in train_rows.items()},
        "sample": {c: {n: r["median"] for n, r in rows.items()} for c, rows in sample_rows.items()},
    }
    print(f"  best: ours train {ours_best['train_img_s']:.1f} img/s ({ours_best['train_config']}), sample {ours_best['sample_img_s']:.1f} img/s ({ours_best['sample_config']})")
    print(f"  ours training: {ours_best['train_img_s'] * train_flops / 1e9:.0f} GFLOP/s = {ours_best['train_mfu_bf16']:.1%} of the bf16 matmul peak, {ours_best['train_mfu_fp32']:.1%} of fp32")
    for name in nets:
        if name != "ours":
            print(
                f"  ours / {name}: train {result[f'train_ratio_{name}']:.2f}x ({result[name]['train_img_s']:.1f} img/s, {result[name]['train_config']}), "
                f"sample {result[f'sample_ratio_{name}']:.2f}x ({result[name]['sample_img_s']:.1f} img/s, {result[name]['sample_config']})"
            )
    return result


def config_name(execution) -> str:
    """The SPEED_CONFIGS name of an ``nn.execution.Execution``."""
    return execution.precision + ("" if execution.channels_last else "-nchw") + ("-compile" if execution.compile else "")


def auto_against_table(size: Size, device: torch.device, sample_batch: int, by_config: dict) -> dict:
    """What `auto` picks for training and sampling on this machine (a fresh probe, as a first run would make it,
    at the table's batch sizes), its cost, and its table rate against the table's best eager configuration."""
    print("\n=== auto: the probe's choice against the table (ours) ===", flush=True)
    cfg = TrainConfig(steps=Params().train.steps, batch_size=size.batch, compile=False)
    build = lambda: ours(size.model, size.channels, size.image_size)
    with tempfile.TemporaryDirectory() as folder:  # never the user's cache: a first run's probe
        cache = ChoiceCache(Path(folder))
        sampling = inference_network(build().to(device), device, Requested("auto", "auto", False), sample_batch,
                                     identity=machine.identity(device), cache=cache)  # fmt: skip
        records = {"train": training_execution(build, cfg, device, cache=cache), "sample": sampling.execution_record}
    result = {}
    for task, record in records.items():
        table = {name: rows["ours"] for name, rows in by_config[task].items() if "compile" not in name}
        best = max(table, key=table.get)
        chosen = config_name(record.execution)
        ratio = table[chosen] / table[best] if chosen in table else float("nan")
        print(f"  {task}: auto chose {chosen} in {record.probe_seconds:.1f} s (probe: {', '.join(f'{k} {v:.0f}' for k, v in record.rates.items())} img/s); "
              f"table: {chosen} {table.get(chosen, float('nan')):.0f} img/s = {ratio:.1%} of the best, {best} {table[best]:.0f}")
        result[task] = {"chosen": chosen, "probe_seconds": record.probe_seconds, "probe_images_per_s": record.rates, "table_best": best, "chosen_over_best": ratio}
    return result


def scaling_table(size: Size, device, config: str, iters: int) -> list[dict]:
    """Ours, in one configuration: cost against image size, batch size and sampling steps."""
    print(f"\n=== scaling, ours, {config} (default model) ===", flush=True)
    process = DiffusionProcess.from_schedule("linear", 1000)
    rows = []
    for image_size in (16, 32, 64):
        for batch in (32, 128):
            s = dataclasses.replace(size, image_size=image_size, batch=batch)
            images = torch.randint(0, 256, (1024, s.channels, image_size, image_size), dtype=torch.uint8, device=device)
            build = lambda s=s: ours(s.model, s.channels, s.image_size)
            train_rate = measure({"ours": TrainRunner(build, s, config, device, images, process)}, batch, iters, 1, device)["ours"]["median"]
            sample_rate = measure({"ours": SampleRunner(build, s, config, device, batch)}, batch, 2 * iters, 1, device)["ours"]["median"]
            row = {"image_size": image_size, "batch": batch, "train_img_s": train_rate, "sample_evals_s": sample_rate}
            for steps in (10, 100, 1000):
                row[f"s_per_image_{steps}_steps"] = steps / sample_rate
            rows.append(row)
            print(
                f"  {image_size:3d}px batch {batch:4d}: train {train_rate:8.1f} img/s, {sample_rate:8.1f} network evals/s"
                f" -> {row['s_per_image_10_steps'] * 1e3:7.2f} / {row['s_per_image_100_steps'] * 1e3:8.2f} / {row['s_per_image_1000_steps'] * 1e3:9.2f} ms per image"
                " at 10 / 100 / 1000 steps",
                flush=True,
            )
    return rows


@click.command(help=__doc__)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda")
@click.option("--sizes", default="default,cifar", show_default=True)
@click.option("--peers", default="diffusers,lucidrains", show_default=True, help="comma-separated; lucidrains is skipped if not installed")
@click.option("--cifar-peers", default="diffusers", show_default=True, help="peers at the 35.7M size (each costs ~10 min of 2-core CPU)")
@click.option("--configs", default=",".join(SPEED_CONFIGS), show_default=True)
@click.option("--iters", default=None, type=int, help="timed steps per round [default: 20 default size, 1 cifar]")
@click.option("--rounds", default=3, show_default=True)
@click.option("--sample-batch", default=256, show_default=True)
@click.option("--scaling/--no-scaling", default=True, show_default=True, help="the image size / batch / steps table")
@click.option("--params", "params_path", default="params.yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path), show_default=True)
@click.option("--quick", is_flag=True, help="one round of one step: checks the script runs, figures are not to be quoted")
@click.option("--json", "as_json", is_flag=True, help="end with one line of JSON")
def main(device, sizes, peers, cifar_peers, configs, iters, rounds, sample_batch, scaling, params_path, quick, as_json):
    device = torch.device(device)
    configs, sizes = configs.split(","), sizes.split(",")
    peers, cifar_peers = [p for p in peers.split(",") if p], [p for p in cifar_peers.split(",") if p]
    checks = (("--configs", configs, SPEED_CONFIGS), ("--peers", peers, PEERS), ("--cifar-peers", cifar_peers, PEERS), ("--sizes", sizes, ("default", "cifar")))
    for option, given, allowed in checks:
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise click.BadParameter(f"{unknown}; allowed: {', '.join(allowed)}", param_hint=option)
    if quick:
        iters, rounds, sample_batch = 1, 1, 8
    torch.manual_seed(0)
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    print(f"device {device} ({cpu_model()}; {cpu_features()}), {torch.get_num_threads()} threads, {versions}")
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    print(f"matmul peak (2048^3): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    out = {"device": str(device) if device.type != "cpu" else f"cpu: {cpu_model()}", "cpu_features": cpu_features(), "threads": torch.get_num_threads(), "versions": versions, "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()}}
    chosen = {"default": default_size(params_path), "cifar": Size("cifar", CIFAR, 3, 32, 128)}
    for name in sizes:
        size_iters = iters or (20 if name == "default" else 1)
        batch = sample_batch if name == "default" else min(sample_batch, 64)
        out[name] = bench_size(chosen[name], device, peers if name == "default" else cifar_peers, configs, size_iters, rounds, batch, peaks)
    if "default" in out:
        out["auto"] = auto_against_table(chosen["default"], device, sample_batch, out["default"]["by_config"])
    if scaling:
        config = out["default"]["ours"]["train_config"] if "default" in out else "fp32"
        out["scaling"] = scaling_table(chosen["default"], device, config, iters or 5)
    if as_json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
