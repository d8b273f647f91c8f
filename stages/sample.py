"""DVC stage `sample`: draw images from the trained model's EMA weights for every run of the plan
(``ddpmlab.sampling.plan``): every sampler x spacing x step count in sample.*, and for conditional
models every other guidance weight at the first of those.

Image i is drawn from its own seed (sample.seed, i), so it is the same image whatever
sample.batch_size is, and starts from the same x_T in every run. Per run (folder <run key>,
e.g. dpmpp_2m-10): one PNG per image, samples.npz, a grid and a denoising strip; at the top,
sampling.json (the plan, settings and timings) and comparison.png (the same seeds in every run).
A conditional model draws image i of class i mod num_classes with classifier-free guidance.

sample.spacing "searched" takes the grids of the `search` stage (--grids). Every run records its
timesteps; every deterministic run also its endpoint error on the first sample.endpoint_images
images against the many-step reference from the same x_T (``ddpmlab.sampling.endpoint``).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from tqdm import tqdm

from ddpmlab.data import images
from ddpmlab.data.image_set import to_uint8
from ddpmlab.evaluation.inception import resolve_weights
from ddpmlab.generation.draw import draw_tensor
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.sampling_outputs import COMPARISON_IMAGES, comparison_figure, save_run
from ddpmlab.pipeline.stage_io import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.sampling import endpoint
from ddpmlab.sampling.guidance import class_labels
from ddpmlab.sampling.plan import build_plan
from ddpmlab.sampling.trajectory import StepInfo, TrajectoryRecorder, image_seeds
from ddpmlab.training.trained import TrainedDiffusion, learns_variance


@click.command(help=__doc__)
@params_option
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with model.pt and train.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for the samples.")
@click.option("--grids", "grids_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The `search` stage's grids (for sample.spacing searched).")
@stage_errors
def main(params_path: str, model_dir: Path, out: Path, grids_path: Path | None) -> None:
    params = read_params(params_path)
    tracking.check_access(params.tracking.experiment)  # the samples are logged at the end: wrong credentials fail before sampling
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
    seeds = image_seeds(cfg.seed, 0, cfg.num_samples)
    num_classes = trained.model.num_classes
    labels = class_labels(cfg.num_samples, num_classes) if num_classes else None
    searched = {(g["sampler"], g["steps"]): g["grid"] for g in read_json(grids_path)["grids"]} if grids_path else {}
    try:
        plan = build_plan(cfg, conditional=bool(num_classes), searched=searched)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    shown = min(cfg.endpoint_images, cfg.num_samples) if any(run.deterministic for run in plan) else 0
    reference, reference_seconds = None, 0.0
    if shown:
        started = time.perf_counter()
        reference = draw_tensor(trained, network, endpoint.reference_run(trained.process.T, plan[0].guidance), seeds[:shown],
                                None if labels is None else labels[:shown], clip_x0=cfg.clip_x0, batch_size=cfg.batch_size, device=device)  # fmt: skip
        reference_seconds = time.perf_counter() - started

    entries, firsts = [], {}
    with tqdm(total=cfg.num_samples * sum(run.nfe for run in plan), desc="sample", unit="img-eval", unit_scale=True) as bar:
        for run in plan:
            bar.set_postfix_str(run.key)
            strip = TrajectoryRecorder(min(cfg.strip_images, cfg.num_samples), cfg.strip_columns, run.steps)

            def callback(info: StepInfo, strip: TrajectoryRecorder = strip, per_step: float = run.nfe / run.steps) -> None:
                if info.step > 0:
                    bar.update(info.x.shape[0] * per_step)
                strip(info)

            started = time.perf_counter()
            drawn = draw_tensor(trained, network, run, seeds, labels, clip_x0=cfg.clip_x0, batch_size=cfg.batch_size, device=device, callback=callback)
            seconds = time.perf_counter() - started
            same_ode = reference is not None and run.deterministic and run.guidance == plan[0].guidance  # the reference's guidance
            errors = endpoint.summary(endpoint.endpoint_errors(drawn[:shown], reference)) if same_ode else {}
            samples = to_uint8(drawn).cpu().numpy()
            save_run(samples, strip, seeds, out / run.folder, images.display_scale(trained.model.image_size), labels)
            if run.guidance == plan[0].guidance:
                firsts[run] = samples[:COMPARISON_IMAGES]
            timesteps = run.process(trained.process).model_timesteps.tolist()
            entries.append({**run.to_dict(), "timesteps": timesteps, "seconds": round(seconds, 2),
                            "seconds_per_sample": round(seconds / cfg.num_samples, 5), **errors})  # fmt: skip
    comparison_figure(firsts, out / "comparison.png")
    write_json(
        out / "sampling.json",
        {
            "clip_x0": cfg.clip_x0,
            "variance": cfg.variance,
            "T": trained.process.T,
            "num_samples": cfg.num_samples,
            "num_classes": num_classes,  # 0: unconditional
            "device": str(device),
            "checkpoint_step": trained.step,
            "weights": "ema",  # TrainedDiffusion loads the EMA weights only
            "model_mode": "train" if network.net.training else "eval",
            "precision": str(network.dtype).removeprefix("torch."),
            "endpoint_reference": {**endpoint.reference_run(trained.process.T).to_dict(), "images": shown, "seconds": round(reference_seconds, 2)},
            "runs": entries,
        },
    )
    train_info = read_json(model_dir / "train.json")
    if tracking.run_exists(train_info["run_id"]):
        tracking.log_artifact(out / "comparison.png", "samples", run_id=train_info["run_id"])
    tracking.finish()
    click.echo(f"sampled {cfg.num_samples} images on {device}: " + ", ".join(f"{e['key']} {e['seconds']:.0f}s" for e in entries))


if __name__ == "__main__":
    main()
