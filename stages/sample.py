"""DVC stage `sample`: draw images from the trained model's EMA weights at every step count
in sample.steps (DDPM Algorithm 2 or DDIM on a respaced grid of timesteps out of T).

Image i is drawn from its own seed (sample.seed, i), so it is the same image whatever
sample.batch_size is, and starts from the same x_T at every step count. Per step count
(folder steps-<n>): one PNG per image, samples.npz, a grid and a denoising strip; at the top,
sampling.json (settings and timings) and a grid comparing the step counts.

A conditional model (model.conditional) draws image i of class i mod num_classes with
classifier-free guidance: every step count at the first sample.guidance weight, then every
other weight at the first step count (folders steps-<n>-w<w>), each with a class x samples grid.
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
from ddpmlab.guidance import class_labels, network_passes, run_key, sweep
from ddpmlab.inception import resolve_weights
from ddpmlab.samplers import SAMPLERS, StepInfo, TrajectoryRecorder, image_seeds, sample_seeded, sampler_options
from ddpmlab.trained import TrainedDiffusion, learns_variance

COMPARISON_IMAGES = 12  # images per row of the step-count comparison grid


def steps_dir(steps: int, w: float | None = None) -> str:
    return f"steps-{steps}" if w is None else f"steps-{steps}-w{w:g}"


def guidance_note(w: float | None) -> str:
    return "" if w is None else f" w={w:g}"


def class_grid(samples: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = 10) -> np.ndarray:
    """(num_classes * per_class, C, H, W): row c holds the first images asked to be class c."""
    rows = []
    for c in range(num_classes):
        chosen = samples[labels == c][:per_class]
        rows.append(np.concatenate([chosen, np.zeros((per_class - len(chosen), *samples.shape[1:]), samples.dtype)]))
    return np.concatenate(rows)


def save_images(samples: np.ndarray, strip: TrajectoryRecorder, seeds: list[int], folder: Path, scale: int, labels: np.ndarray | None = None) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    extra = {} if labels is None else {"labels": labels}  # the class each image was asked to be
    np.savez_compressed(folder / "samples.npz", images=samples, seeds=np.asarray(seeds, dtype=np.int64), **extra)
    for i, image in enumerate(samples):
        images.save_png(image, folder / "images" / f"{i:06d}.png")
    images.save_png(images.upscale(images.grid(samples[:64], columns=8), scale), folder / "grid.png")
    if strip.count:
        frames = to_uint8(strip.strip()).numpy()
        images.save_png(images.upscale(images.grid(frames, columns=len(strip.frames)), scale), folder / "denoise_strip.png")
    if labels is not None:
        num_classes = int(labels.max()) + 1
        images.save_png(images.upscale(images.grid(class_grid(samples, labels, num_classes), columns=10), scale), folder / "class_grid.png")


@click.command(help=__doc__)
@params_option
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with model.pt and train.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for the samples.")
@stage_errors
def main(params_path: str, model_dir: Path, out: Path) -> None:
    params = read_params(params_path)
    tracking.require_reachable()  # the samples are logged at the end: fail before sampling, not after
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
    num_classes = trained.model.num_classes
    labels = class_labels(cfg.num_samples, num_classes) if num_classes else None
    plan = sweep(cfg.steps, cfg.guidance, conditional=bool(num_classes))

    runs, comparison = [], []
    network_evals = sum(steps * network_passes(w) for steps, w in plan)
    with tqdm(total=cfg.num_samples * network_evals, desc="sample", unit="img-eval", unit_scale=True) as bar:
        for steps, w in plan:
            bar.set_postfix(steps=steps, **({} if w is None else {"w": w}))
            strip = TrajectoryRecorder(min(cfg.strip_images, cfg.num_samples), cfg.strip_columns, steps)

            def callback(info: StepInfo, strip: TrajectoryRecorder = strip, evals: int = network_passes(w)) -> None:
                if info.step > 0:
                    bar.update(info.x.shape[0] * evals)
                strip(info)

            started = time.perf_counter()
            x0 = sample_seeded(
                SAMPLERS[cfg.sampler], network, trained.process.with_steps(steps), seeds, image_shape,
                batch_size=cfg.batch_size, device=device, callback=callback, clip_x0=cfg.clip_x0,
                objective=trained.params["objective"], labels=labels, guidance=w or 0.0, **options,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            samples = to_uint8(x0).cpu().numpy()
            save_images(samples, strip, seeds, out / steps_dir(steps, w), scale, labels)
            if w is None or w == cfg.guidance[0]:
                comparison.append(samples[:COMPARISON_IMAGES])
            runs.append(
                {
                    "steps": steps,
                    "guidance": w,
                    "key": run_key(steps, w),
                    "folder": steps_dir(steps, w),
                    "network_evals_per_sample": steps * network_passes(w),
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
            "num_classes": num_classes,  # 0: unconditional
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
    summary = ", ".join(f"{r['steps']} steps{guidance_note(r['guidance'])} {r['seconds']:.0f}s" for r in runs)
    click.echo(f"sampled {cfg.num_samples} images on {device}: {summary}")


if __name__ == "__main__":
    main()
