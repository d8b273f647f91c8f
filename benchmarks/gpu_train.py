"""GPU training and sampling throughput of ddpmlab's DDPM CIFAR-10 U-Net against diffusers' UNet2DModel.

What it measures, on one device, both networks built to the same size (35.7M parameters):

* training images/s at a fixed batch (default 128): one full DDPM training step per iteration,
  as ``ddpmlab.training.loop.train`` does it -- draw a batch of uint8 images from a device-resident set,
  scale to [-1, 1], random horizontal flip, sample t and noise, q_sample, forward, eps-prediction
  L_simple (``ddpmlab.core.losses.TrainingLoss``), backward, grad-norm clip 1.0, AdamW step (fused),
  EMA update (``ddpmlab.training.loop.EMA``). Precision configurations:
      fp32            TF32 off for matmuls and convolutions, NCHW
      tf32            TF32 on, NCHW
      bf16-nchw       bf16 autocast (fp32 master weights), TF32 on, NCHW
      bf16            bf16 autocast, TF32 on, channels_last
      bf16-compile    as bf16, the network wrapped in torch.compile (compile time reported)
* sampling images/s: one network evaluation per image (eval mode, inference_mode), default batch 512.
* peak GPU memory allocated during each timed region (both models stay resident, so each figure
  also holds the other model's ~0.7 GB of weights, gradients, Adam and EMA state).

Timing: warm-up iterations are excluded; each figure is the median of ``--rounds`` rounds of
``--iters`` iterations, with torch.cuda.synchronize() around each round; ours and the peer alternate
round by round in the same process. ``--sanity`` also runs the library's own ``train`` loop.

    PYTHONPATH=src python benchmarks/gpu_train.py                         # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_train.py --device cpu --small --batch 4 --iters 2 --warmup 1 \
        --rounds 1 --sample-batch 4 --configs fp32,bf16 --sanity-steps 4   # smoke test
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time

import click
import peers
import torch
from torch import nn

from ddpmlab.config import TrainConfig
from ddpmlab.core.diffusion import DiffusionProcess, sample_timesteps
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.data.image_set import to_model_range
from ddpmlab.nn.unet import UNet, count_parameters
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training.loop import EMA, new_train_state, train

CONFIGS = ("fp32", "tf32", "bf16-nchw", "bf16", "bf16-compile")
STEPS_800K = 800_000


def build(name: str, small: bool) -> nn.Module:
    """ours: the DDPM CIFAR-10 net (Ho et al. 2020, appendix B); diffusers: UNet2DModel of matched layout (peers.py)."""
    width, groups = (32, 8) if small else (128, 32)
    cfg = UNetConfig(channels=width, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1, norm_groups=groups)
    return peers.ours(cfg, 3, 32) if name == "ours" else peers.diffusers_unet(cfg, 3, 32)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model's full training step (the body of ``ddpmlab.training.loop.train``), in a given precision."""

    def __init__(self, name, small, device, batch, bf16, channels_last, compile_, images, process):
        torch.manual_seed(0)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build(name, small).to(device, memory_format=self.fmt).train()
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-4, weight_decay=0.0, fused=device.type == "cuda")
        self.ema = EMA(self.model, 0.9999)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.loss_fn, self.process, self.images, self.batch = TrainingLoss(), process, images, batch
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.device, self.updates, self.last_loss = device, 0, None

    def step(self) -> None:
        g, b = self.generator, self.batch
        idx = torch.randint(0, self.images.shape[0], (b,), device=self.device, generator=g)
        x0 = to_model_range(self.images[idx])
        flip = torch.rand(b, device=self.device, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0).contiguous(memory_format=self.fmt)
        t = sample_timesteps(b, self.process.T, self.device, g)
        noise = torch.randn(x0.shape, device=self.device, generator=g)
        with self.autocast():
            loss = self.loss_fn(self.forward, self.process, x0, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.model, self.updates)
        self.updates += 1
        self.last_loss = loss.detach()


def timed(fn, n: int, device: torch.device) -> float:
    """Seconds for n calls of fn, device work included."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure_pair(runners: dict, per_iter_images: int, warmup: int, iters: int, rounds: int, device) -> dict:
    """Warm up each runner, then time them alternately; returns name -> row of figures."""
    rows = {}
    for name, fn in runners.items():
        sync(device)
        start = time.perf_counter()
        fn()  # first call: compilation, cuDNN autotuning, allocator growth
        sync(device)
        first = time.perf_counter() - start
        for _ in range(max(0, warmup - 1)):
            fn()
        sync(device)
        rows[name] = {"first_s": first, "rates": [], "peak": 0.0}
    for _ in range(rounds):
        for name, fn in runners.items():
            reset_peak(device)
            seconds = timed(fn, iters, device)
            rows[name]["rates"].append(per_iter_images * iters / seconds)
            rows[name]["peak"] = max(rows[name]["peak"], peak_gib(device))
    for row in rows.values():
        row["median"] = statistics.median(row["rates"])
    return rows


def fmt_row(kind, config, name, row) -> str:
    spread = f"{min(row['rates']):8.0f}-{max(row['rates']):<8.0f}"
    return f"{kind:8s} {config:13s} {name:9s} {row['median']:10.0f}  {spread} {row['peak']:8.2f}  {row['first_s']:8.1f}"


def library_sanity(device: torch.device, steps: int, small: bool, cifar_steps: int) -> None:
    """The library's own new_train_state + train on the device: tiny default net, random 16x16 images;
    then (unless small) the CIFAR-10 net at batch 128 for ``cifar_steps`` steps, its logged images/s."""
    process = DiffusionProcess.from_schedule("linear", 1000)
    gen = torch.Generator(device=device).manual_seed(0)
    small = UNetConfig(num_res_blocks=2)  # UNetConfig()'s default when RESULTS.md was measured; params.yaml's now has 1 block
    runs = [("UNetConfig(num_res_blocks=2), 16x16, batch 64", small, 16, 64, steps)]
    if not small and cifar_steps > 0:
        cifar = UNetConfig(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1, norm_groups=32)
        runs.append(("CIFAR-10 net, 32x32, batch 128 (fp32, channels_last, non-fused AdamW)", cifar, 32, 128, cifar_steps))
    for label, cfg, size, batch, n in runs:
        images = torch.randint(0, 256, (2048, 3, size, size), dtype=torch.uint8, device=device, generator=gen)
        tcfg = TrainConfig(
            steps=n, batch_size=batch, lr=2e-4 if size == 32 else 1e-3, warmup_steps=10, log_every=max(1, n // 5),
            precision="fp32", channels_last=True, compile=False, ema_decay=0.999, checkpoint_every=500,  # the settings these runs were measured with
        )  # fmt: skip
        state = new_train_state(lambda cfg=cfg, size=size: UNet(cfg, 3, size), tcfg, seed=0, device=device)
        logs = []
        start = time.perf_counter()
        train(state, process, images, tcfg, hflip=True, on_log=logs.append)
        sync(device)
        print(f"\n[library train] {label}: {n} steps in {time.perf_counter() - start:.1f}s")
        for r in logs:
            print(f"  step {r.step:4d}  loss {r.loss:.4f}  lr {r.lr:.2e}  {r.images_per_s:8.0f} img/s")
        losses = [r.loss for r in logs]
        ok = all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
        print(f"  loss finite and decreasing: {ok} ({losses[0]:.4f} -> {losses[-1]:.4f})")
        del state


@click.command()
@click.option("--device", default="cuda")
@click.option("--batch", default=128, show_default=True, help="training batch")
@click.option("--iters", default=50, show_default=True, help="timed iterations per round")
@click.option("--warmup", default=10, show_default=True)
@click.option("--rounds", default=3, show_default=True, help="timed rounds per model; median reported")
@click.option("--sample-batch", default=512, show_default=True)
@click.option("--sample-iters", default=20, show_default=True)
@click.option("--configs", default=",".join(CONFIGS), show_default=True)
@click.option("--models", default="ours,diffusers", show_default=True)
@click.option("--small", is_flag=True, help="width 32 nets (smoke test)")
@click.option("--sanity/--no-sanity", default=True, help="also run ddpmlab.training.loop.train")
@click.option("--sanity-steps", default=50, show_default=True)
@click.option("--library-cifar-steps", default=60, show_default=True, help="library train loop on the CIFAR net")
def main(device, batch, iters, warmup, rounds, sample_batch, sample_iters, configs, models, small, sanity, sanity_steps, library_cifar_steps):
    device = torch.device(device)
    configs, models = configs.split(","), models.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise click.BadParameter(f"unknown configs {sorted(unknown)}; allowed: {', '.join(CONFIGS)}")
    print(f"torch {torch.__version__}", end="")
    if device.type == "cuda":
        print(f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(device)}", end="")
    if "diffusers" in models:
        import diffusers

        print(f", diffusers {diffusers.__version__}", end="")
    print()
    counts = {m: count_parameters(build(m, small)) for m in models}
    for m, c in counts.items():
        print(f"parameters {m:9s} {c:,} ({c / 1e6:.2f}M)")
    if not small:
        assert abs(counts["ours"] / 35.7e6 - 1) < 0.01, "ours should be 35.7M parameters (DDPM paper) within 1%"
    if "diffusers" in models:
        assert abs(counts["diffusers"] / counts["ours"] - 1) < 0.10, "peer should be within 10% of ours"
    torch.backends.cudnn.benchmark = True

    process = DiffusionProcess.from_schedule("linear", 1000)
    images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, device=device)
    header = f"{'kind':8s} {'config':13s} {'model':9s} {'img/s':>10s}  {'min-max':17s} {'peak GiB':>8s}  {'first s':>8s}"
    results = []  # (kind, config, model, row)

    for config in configs:
        set_tf32(config != "fp32")
        compile_ = config == "bf16-compile"
        bf16, cl = config.startswith("bf16"), config in ("bf16", "bf16-compile")
        print(f"\n== train {config} (batch {batch}) ==", flush=True)
        trainers = {m: Trainer(m, small, device, batch, bf16, cl, compile_, images, process) for m in models}
        try:
            rows = measure_pair({m: tr.step for m, tr in trainers.items()}, batch, warmup, iters, rounds, device)
        except Exception as exc:  # noqa: BLE001  torch.compile failures must not lose the other figures
            print(f"!! {config} failed: {type(exc).__name__}: {exc}")
            del trainers
            continue
        for m, row in rows.items():
            loss = float(trainers[m].last_loss)
            print(fmt_row("train", config, m, row) + f"   loss {loss:.4f}", flush=True)
            assert math.isfinite(loss), f"{m} {config}: loss {loss}"
            results.append(("train", config, m, row))
        del trainers
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for config in [c for c in ("fp32", "tf32", "bf16") if c in configs]:
        set_tf32(config != "fp32")
        bf16 = config == "bf16"
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        print(f"\n== sample {config} (batch {sample_batch}, one network evaluation per image) ==", flush=True)
        nets = {m: build(m, small).to(device, memory_format=fmt).eval() for m in models}
        x = torch.randn(sample_batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        t = torch.randint(0, 1000, (sample_batch,), device=device)

        def evaluate(net, x=x, t=t, bf16=bf16):  # bound now: the closure runs inside this iteration only
            def fn():
                with torch.inference_mode(), (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
                    net(x, t)

            return fn

        rows = measure_pair({m: evaluate(n) for m, n in nets.items()}, sample_batch, max(3, warmup // 2), sample_iters, rounds, device)
        for m, row in rows.items():
            print(fmt_row("sample", config, m, row), flush=True)
            results.append(("sample", config, m, row))
        del nets

    print("\n== summary ==")
    print(header)
    for kind, config, m, row in results:
        print(fmt_row(kind, config, m, row))
    by = {(k, c, m): r["median"] for k, c, m, r in results}
    if "diffusers" in models and "ours" in models:
        print("\nratio ours / diffusers (median img/s)")
        for kind, config in dict.fromkeys((k, c) for k, c, _, _ in results):
            if (kind, config, "diffusers") in by and (kind, config, "ours") in by:
                print(f"  {kind:8s} {config:13s} {by[(kind, config, 'ours')] / by[(kind, config, 'diffusers')]:.2f}x")
    ours_train = {c: r["median"] for k, c, m, r in results if k == "train" and m == "ours"}
    if ours_train:
        best = max(ours_train, key=ours_train.get)
        for config, rate in ours_train.items():
            hours = STEPS_800K * batch / rate / 3600
            mark = "  <- best" if config == best else ""
            print(f"projected 800k steps at batch {batch}, ours {config:13s}: {hours:6.1f} h ({hours / 24:.2f} days){mark}")
    if device.type == "cuda":
        worst = max(results, key=lambda r: r[3]["peak"])
        print(f"highest peak GPU memory allocated in a timed region: {worst[3]['peak']:.2f} GiB ({worst[0]} {worst[1]} {worst[2]})")

    if sanity:
        del images
        library_sanity(device, sanity_steps, small, library_cifar_steps)


if __name__ == "__main__":
    main()
