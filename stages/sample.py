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
from tqdm import tqdm

from ddpmlab import images, tracking
from ddpmlab.cli import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.data import to_uint8
from ddpmlab.devices import resolve_device
from ddpmlab.samplers import SAMPLERS, StepInfo, TrajectoryRecorder, image_seeds, sample_seeded, sampler_options
from ddpmlab.trained import TrainedDiffusion


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
    image_shape = (trained.model.in_channels, trained.model.image_size, trained.model.image_size)
    seeds = image_seeds(cfg.seed, 0, cfg.num_samples)
    steps = trained.process.T
    strip = TrajectoryRecorder(min(cfg.strip_images, cfg.num_samples), cfg.strip_columns, steps)

    started = time.perf_counter()
    with tqdm(total=cfg.num_samples * steps, desc="sample", unit="img-step", unit_scale=True) as bar:

        def callback(info: StepInfo) -> None:
            if info.step > 0:
                bar.update(info.x.shape[0])
            strip(info)

        x0 = sample_seeded(
            SAMPLERS[cfg.sampler], trained.model, trained.process, seeds, image_shape,
            batch_size=cfg.batch_size, device=device, callback=callback, clip_x0=cfg.clip_x0,
            objective=trained.params["objective"], **sampler_options(cfg.sampler, variance=cfg.variance, eta=cfg.eta),
        )  # fmt: skip
    seconds = time.perf_counter() - started
    samples = to_uint8(x0).cpu().numpy()

    (out / "images").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", images=samples, seeds=np.asarray(seeds, dtype=np.int64))
    for i, image in enumerate(samples):
        images.save_png(image, out / "images" / f"{i:06d}.png")
    scale = images.display_scale(trained.model.image_size)
    images.save_png(images.upscale(images.grid(samples[:64], columns=8), scale), out / "grid.png")
    if strip.count:
        columns = len(strip.frames)
        images.save_png(images.upscale(images.grid(to_uint8(strip.strip()).numpy(), columns=columns), scale), out / "denoise_strip.png")
    write_json(
        out / "sampling.json",
        {
            "sampler": cfg.sampler,
            "variance": cfg.variance if cfg.sampler == "ddpm" else None,
            "eta": cfg.eta if cfg.sampler == "ddim" else None,
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
