"""The sample stage's work: every run of the plan drawn from the trained model's EMA weights, with
its files, timings and (deterministic runs) endpoint error, then sampling.json and the comparison figure.

Image i is drawn from its own seed (sample.seed, i), so it is the same image whatever
sample.batch_size is, and starts from the same x_T in every run (``sampling.trajectory.image_seeds``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ddpmlab.config import Params, SampleConfig
from ddpmlab.data import images
from ddpmlab.data.image_set import to_uint8
from ddpmlab.evaluation import metric_registry
from ddpmlab.evaluation.inception import resolve_weights
from ddpmlab.evaluation.resampling import mean_interval
from ddpmlab.model.draw import draw_tensor
from ddpmlab.model.trained import TrainedDiffusion, learns_variance
from ddpmlab.nn.acceleration import InferenceNetwork
from ddpmlab.nn.autotune import planned_calls
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.sampling_outputs import COMPARISON_IMAGES, save_run
from ddpmlab.pipeline.stage_io import read_json, write_json
from ddpmlab.reporting.figures.samples import sampler_comparison_figure
from ddpmlab.sampling import endpoint
from ddpmlab.sampling.guidance import class_labels
from ddpmlab.sampling.plan import Run, build_plan
from ddpmlab.sampling.trajectory import StepInfo, TrajectoryRecorder, image_seeds


@dataclass
class Drawer:
    """The trained model, its sampling network (weights cast once) and the stage's images: what every run draws with."""

    trained: TrainedDiffusion
    network: InferenceNetwork
    cfg: SampleConfig
    seeds: list[int]
    labels: np.ndarray | None
    device: torch.device

    def draw(self, run: Run, count: int | None = None, callback=None) -> torch.Tensor:
        """The first ``count`` (default: all) images of ``run``, float (count, C, H, W) in [-1, 1]."""
        seeds = self.seeds if count is None else self.seeds[:count]
        labels = None if self.labels is None else self.labels[: len(seeds)]
        return draw_tensor(self.trained, self.network, run, seeds, labels, clip_x0=self.cfg.clip_x0, batch_size=self.cfg.batch_size,
                           device=self.device, callback=callback)  # fmt: skip


def endpoint_summary(errors: torch.Tensor) -> dict[str, float]:
    """Mean endpoint error over images (N,) -> with its 95% t interval (``evaluation.resampling.mean_interval``)."""
    mean, band = mean_interval(errors.cpu().numpy())
    band = band.clamped(metric_registry.bounds("endpoint_error"))
    return {"endpoint_error": round(mean, 5), "endpoint_error_ci_low": round(band.low, 5), "endpoint_error_ci_high": round(band.high, 5)}


def load_trained(params: Params, model_dir: Path) -> TrainedDiffusion:
    """The model of ``model_dir`` on params.device, checked against sample.* before any image is drawn."""
    if params.evaluate.feature_extractor == "inception-v3-compat":
        # Fail here, not after sampling, when `evaluate` could not load its extractor (offline, no file).
        # Not a declared param of this stage: it never changes the samples.
        resolve_weights(params.evaluate.inception_weights)
    trained = TrainedDiffusion.load(model_dir / "model.pt", resolve_device(params.device))
    if params.sample.variance == "learned_range" and not learns_variance(trained.params):
        raise click.UsageError("sample.variance=learned_range, but the checkpoint was trained with train.learn_variance: false")
    return trained


def network_calls(cfg: SampleConfig, plan: list[Run], reference_images: int, reference_nfe: int) -> int:
    """Sampling-network calls of the whole stage (batches x NFE per run, and the endpoint reference's): what
    `auto` weighs a compile against. A guided run's doubled batch is counted as one call."""
    runs = planned_calls(cfg.num_samples, cfg.batch_size, sum(run.nfe for run in plan))
    return runs + planned_calls(reference_images, cfg.batch_size, reference_nfe)


def make_drawer(params: Params, trained: TrainedDiffusion, planned_calls: int | None = None) -> Drawer:
    """The drawer of the stage's images: the sampling network (sample.precision / channels_last / compile, `auto`
    timed at the stage's batch size) built once, every image's seed and, for a conditional model, its class."""
    cfg = params.sample
    batch = min(cfg.batch_size, cfg.num_samples)
    network = trained.sampling_network(cfg.precision, cfg.compile, cfg.channels_last, batch, planned_calls)  # weights cast once
    num_classes = trained.model.num_classes
    labels = class_labels(cfg.num_samples, num_classes) if num_classes else None
    device = next(trained.model.parameters()).device
    return Drawer(trained, network, cfg, image_seeds(cfg.seed, 0, cfg.num_samples), labels, device)


def plan_runs(cfg: SampleConfig, conditional: bool, grids_path: Path | None) -> list[Run]:
    """The plan of sample.*, with the `search` stage's grids for spacing "searched"; a usage error names what is missing."""
    searched = {(g["sampler"], g["steps"]): g["grid"] for g in read_json(grids_path)["grids"]} if grids_path else {}
    try:
        return build_plan(cfg, conditional=conditional, searched=searched)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def draw_plan(drawer: Drawer, plan: list[Run], out: Path, reference: torch.Tensor | None) -> tuple[list[dict], dict[Run, np.ndarray]]:
    """Draw and save every run: (its sampling.json entries, the first images of each run at the headline w)."""
    cfg, shown = drawer.cfg, 0 if reference is None else len(reference)
    scale = images.display_scale(drawer.trained.model.image_size)
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
            drawn = drawer.draw(run, callback=callback)
            seconds = time.perf_counter() - started
            same_ode = reference is not None and run.deterministic and run.guidance == plan[0].guidance  # the reference's guidance
            errors = endpoint_summary(endpoint.endpoint_errors(drawn[:shown], reference)) if same_ode else {}
            samples = to_uint8(drawn).cpu().numpy()
            save_run(samples, strip, drawer.seeds, out / run.folder, scale, drawer.labels)
            if run.guidance == plan[0].guidance:
                firsts[run] = samples[:COMPARISON_IMAGES]
            timesteps = run.process(drawer.trained.process).model_timesteps.tolist()
            entries.append({**run.to_dict(), "timesteps": timesteps, "seconds": round(seconds, 2),
                            "seconds_per_sample": round(seconds / cfg.num_samples, 5), **errors})  # fmt: skip
    return entries, firsts


def run_sampling(params: Params, model_dir: Path, out: Path, grids_path: Path | None) -> str:
    """Sample every run of the plan into ``out``; returns the one-line summary the stage prints."""
    cfg, trained = params.sample, load_trained(params, model_dir)
    plan = plan_runs(cfg, bool(trained.model.num_classes), grids_path)
    shown = min(cfg.endpoint_images, cfg.num_samples) if any(run.deterministic for run in plan) else 0
    drawer = make_drawer(params, trained, network_calls(cfg, plan, shown, endpoint.reference_run(trained.process.T).nfe))
    reference, reference_seconds = None, 0.0
    if shown:
        started = time.perf_counter()
        reference = drawer.draw(endpoint.reference_run(trained.process.T, plan[0].guidance), shown)
        reference_seconds = time.perf_counter() - started
    entries, firsts = draw_plan(drawer, plan, out, reference)
    sampler_comparison_figure(firsts, out / "comparison.png")
    write_json(
        out / "sampling.json",
        {
            "clip_x0": cfg.clip_x0,
            "variance": cfg.variance,
            "T": trained.process.T,
            "num_samples": cfg.num_samples,
            "num_classes": trained.model.num_classes,  # 0: unconditional
            "device": str(drawer.device),
            "checkpoint_step": trained.step,
            "weights": "ema",  # TrainedDiffusion loads the EMA weights only
            "model_mode": "train" if drawer.network.net.training else "eval",
            "execution": drawer.network.execution_record.summary(),  # how it ran: precision, memory format, compile, machine
            "endpoint_reference": {**endpoint.reference_run(trained.process.T).to_dict(), "images": shown, "seconds": round(reference_seconds, 2)},
            "runs": entries,
        },
    )
    train_info = read_json(model_dir / "train.json")
    if tracking.run_exists(train_info["run_id"]):
        tracking.log_artifact(out / "comparison.png", "samples", run_id=train_info["run_id"])
        tracking.set_tags(drawer.network.execution_record.tags(), run_id=train_info["run_id"])
    return f"sampled {cfg.num_samples} images on {drawer.device}: " + ", ".join(f"{e['key']} {e['seconds']:.0f}s" for e in entries)
