"""DVC stage `sample`: draw images from the trained model's EMA weights (DDPM Algorithm 2).

Image i is drawn from its own seed (sample.seed, i), so it is the same image whatever
sample.batch_size is. Writes one PNG per image, samples.npz, a grid, and a strip of
x_t at several t for the first few images.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ddpmlab import images, tracking
from ddpmlab.cli import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.data import to_uint8
from ddpmlab.devices import resolve_device
from ddpmlab.samplers import SAMPLERS, SeededNoise, StepInfo, image_seeds
from ddpmlab.trained import TrainedDiffusion


class StripRecorder:
    """Keeps x_t of the first ``count`` images at ``columns`` evenly spaced reverse steps."""

    def __init__(self, count: int, columns: int, total_steps: int):
        self.count = count
        keep = np.linspace(0, total_steps, num=max(2, columns)).round().astype(int)
        self.keep_steps = set(keep.tolist())
        self.frames: list[torch.Tensor] = []

    def record_start(self, x: torch.Tensor) -> None:
        if 0 in self.keep_steps:
            self.frames.append(to_uint8(x[: self.count]).cpu())

    def __call__(self, info: StepInfo) -> None:
        if info.step in self.keep_steps:
            self.frames.append(to_uint8(info.x[: self.count]).cpu())

    def strip(self) -> np.ndarray:
        """(count * columns, C, H, W): row r is image r from x_T (left) to x_0 (right)."""
        frames = torch.stack(self.frames, dim=1)  # (count, columns, C, H, W)
        return frames.flatten(0, 1).numpy()


@click.command(help=__doc__)
@params_option
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with model.pt and train.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for the samples.")
@stage_errors
def main(params_path: str, model_dir: Path, out: Path) -> None:
    params = read_params(params_path)
    cfg = params.sample
    device = resolve_device(params.device)
    trained = TrainedDiffusion.load(model_dir / "model.pt", device)
    sampler = SAMPLERS[cfg.sampler]
    image_shape = (trained.model.in_channels, trained.model.image_size, trained.model.image_size)
    seeds = image_seeds(cfg.seed, 0, cfg.num_samples)
    steps = trained.process.T
    strip = StripRecorder(min(cfg.strip_images, cfg.num_samples), cfg.strip_columns, steps)

    batches = []
    started = time.perf_counter()
    with tqdm(total=cfg.num_samples * steps, desc="sample", unit="img-step", unit_scale=True) as bar:
        for start in range(0, cfg.num_samples, cfg.batch_size):
            batch_seeds = seeds[start : start + cfg.batch_size]
            noise = SeededNoise(batch_seeds, image_shape, device)
            record = strip if start == 0 and strip.count else None

            def callback(info: StepInfo, n: int = len(batch_seeds), record=record) -> None:
                bar.update(n)
                if record is not None:
                    record(info)

            if record is not None:  # x_T of this batch is the first draw of its generators
                record.record_start(SeededNoise(batch_seeds[: strip.count], image_shape, device)())
            x0 = sampler(trained.model, trained.process, noise, variance=cfg.variance, clip_x0=cfg.clip_x0, callback=callback)
            batches.append(to_uint8(x0).cpu().numpy())
    seconds = time.perf_counter() - started
    samples = np.concatenate(batches)

    (out / "images").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", images=samples, seeds=np.asarray(seeds, dtype=np.int64))
    for i, image in enumerate(samples):
        images.save_png(image, out / "images" / f"{i:06d}.png")
    scale = images.display_scale(trained.model.image_size)
    images.save_png(images.upscale(images.grid(samples[:64], columns=8), scale), out / "grid.png")
    if strip.count:
        columns = len(strip.frames)
        images.save_png(images.upscale(images.grid(strip.strip(), columns=columns), scale), out / "denoise_strip.png")
    write_json(
        out / "sampling.json",
        {
            "sampler": cfg.sampler,
            "variance": cfg.variance,
            "clip_x0": cfg.clip_x0,
            "steps": steps,
            "num_samples": cfg.num_samples,
            "network_evals_per_sample": steps,
            "seconds": round(seconds, 2),
            "seconds_per_sample": round(seconds / cfg.num_samples, 5),
            "device": str(device),
            "checkpoint_step": trained.step,
        },
    )
    train_info = read_json(model_dir / "train.json")
    tracking.use_experiment(params.tracking.experiment)
    if tracking.run_exists(train_info["run_id"]):
        for name in ("grid.png", "denoise_strip.png"):
            if (out / name).is_file():
                tracking.log_artifact(out / name, "samples", run_id=train_info["run_id"])
    click.echo(f"sampled {cfg.num_samples} images x {steps} steps in {seconds:.0f}s on {device}")


if __name__ == "__main__":
    main()
