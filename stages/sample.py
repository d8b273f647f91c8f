"""DVC stage `sample`: draw images from the trained model's EMA weights at every step count
in sample.steps (DDPM Algorithm 2 or DDIM on a respaced grid of timesteps out of T).

Image i is drawn from its own seed (sample.seed, i), so it is the same image whatever
sample.batch_size is, and starts from the same x_T at every step count. Per step count
(folder steps-<n>): one PNG per image, samples.npz, a grid and a denoising strip; at the top,
sampling.json (settings and timings) and a grid comparing the step counts.
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
from ddpmlab.inception import resolve_weights
from ddpmlab.samplers import SAMPLERS, StepInfo, TrajectoryRecorder, image_seeds, sample_seeded, sampler_options
from ddpmlab.trained import TrainedDiffusion, learns_variance

COMPARISON_IMAGES = 12  # images per row of the step-count comparison grid


def steps_dir(steps: int) -> str:
    return f"steps-{steps}"


def save_images(samples: np.ndarray, strip: TrajectoryRecorder, seeds: list[int], folder: Path, scale: int) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "samples.npz", images=samples, seeds=np.asarray(seeds, dtype=np.int64))
    for i, image in enumerate(samples):
        images.save_png(image, folder / "images" / f"{i:06d}.png")
    images.save_png(images.upscale(images.grid(samples[:64], columns=8), scale), folder / "grid.png")
    if strip.count:
        frames = to_uint8(strip.strip()).numpy()
        images.save_png(images.upscale(images.grid(frames, columns=len(strip.frames)), scale), folder / "denoise_strip.png")


@click.command(help=__doc__)
@params_option
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with model.pt and train.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for the samples.")
@stage_errors
def main(params_path: str, model_dir: Path, out: Path) -> None:
    params = read_params(params_path)
    cfg = params.sample
    if params.evaluate.feature_extractor == "inception-v3-compat":
        # Fail here, not after sampling, when `evaluate` could not load its extractor (offline, no file).
        # Not a declared param of this stage: it never changes the samples.
        resolve_weights(params.evaluate.inception_weights)
    device = resolve_device(params.device)
    trained = TrainedDiffusion.load(model_dir / "model.pt", device)
    if cfg.variance == "learned_range" and not learns_variance(trained.params):
        raise click.UsageError("sample.variance=learned_range, but the checkpoint was trained with train.learn_variance: false")
    network = trained.sampling_network(cfg.precision, cfg.compile)  # weights cast once, not per call
    image_shape = (trained.model.in_channels, trained.model.image_size, trained.model.image_size)
    seeds = image_seeds(cfg.seed, 0, cfg.num_samples)
    scale = images.display_scale(trained.model.image_size)
    options = sampler_options(cfg.sampler, variance=cfg.variance, eta=cfg.eta)

    runs, comparison = [], []
    with tqdm(total=cfg.num_samples * sum(cfg.steps), desc="sample", unit="img-step", unit_scale=True) as bar:
        for steps in cfg.steps:
            bar.set_postfix(steps=steps)
            strip = TrajectoryRecorder(min(cfg.strip_images, cfg.num_samples), cfg.strip_columns, steps)

            def callback(info: StepInfo, strip: TrajectoryRecorder = strip) -> None:
                if info.step > 0:
                    bar.update(info.x.shape[0])
                strip(info)

            started = time.perf_counter()
            x0 = sample_seeded(
                SAMPLERS[cfg.sampler], network, trained.process.with_steps(steps), seeds, image_shape,
                batch_size=cfg.batch_size, device=device, callback=callback, clip_x0=cfg.clip_x0,
                objective=trained.params["objective"], **options,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            samples = to_uint8(x0).cpu().numpy()
            save_images(samples, strip, seeds, out / steps_dir(steps), scale)
            comparison.append(samples[:COMPARISON_IMAGES])
            runs.append(
                {
                    "steps": steps,
                    "folder": steps_dir(steps),
                    "network_evals_per_sample": steps,
                    "seconds": round(seconds, 2),
                    "seconds_per_sample": round(seconds / cfg.num_samples, 5),
                }
            )
    images.save_png(images.upscale(images.grid(np.concatenate(comparison), columns=len(comparison[0])), scale), out / "steps_comparison.png")
    write_json(
        out / "sampling.json",
        {
            "sampler": cfg.sampler,
            "variance": cfg.variance if cfg.sampler == "ddpm" else None,
            "eta": cfg.eta if cfg.sampler == "ddim" else None,
            "clip_x0": cfg.clip_x0,
            "T": trained.process.T,
            "num_samples": cfg.num_samples,
            "device": str(device),
            "checkpoint_step": trained.step,
            "weights": "ema",  # TrainedDiffusion loads the EMA weights only
            "model_mode": "train" if network.net.training else "eval",
            "precision": str(network.dtype).removeprefix("torch."),
            "runs": runs,
        },
    )
    train_info = read_json(model_dir / "train.json")
    tracking.use_experiment(params.tracking.experiment)
    if tracking.run_exists(train_info["run_id"]):
        tracking.log_artifact(out / "steps_comparison.png", "samples", run_id=train_info["run_id"])
    summary = ", ".join(f"{r['steps']} steps {r['seconds']:.0f}s" for r in runs)
    click.echo(f"sampled {cfg.num_samples} images on {device}: {summary}")


if __name__ == "__main__":
    main()
