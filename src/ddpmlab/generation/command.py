"""`ddpmlab generate`: images from a trained model in one call, outside the DVC pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from ddpmlab import __version__
from ddpmlab.core.math_names import SPACINGS
from ddpmlab.generation.model_locations import SourceError, open_source
from ddpmlab.generation.numbers import parse_numbers
from ddpmlab.generation.outputs import check_destination, image_name, staged_folder, write_outputs
from ddpmlab.generation.request import BadRequest, build_request
from ddpmlab.model.checkpoint import CheckpointError
from ddpmlab.model.defaults import DEFAULT_STEPS, default_steps, option_fields
from ddpmlab.model.draw import draw_images
from ddpmlab.model.trained import TrainedDiffusion, read_checkpoint
from ddpmlab.nn.autotune import planned_calls
from ddpmlab.nn.devices import resolve_device
from ddpmlab.nn.hardware_names import DEVICES, PRECISIONS, switch
from ddpmlab.sampling.catalog import SAMPLER_CARDS
from ddpmlab.sampling.trajectory import StepInfo


def _option_flags(command):
    """One flag per sampler option in the registry (--eta, --variance, ...), named for the samplers that read it."""
    for name, default in reversed(option_fields().items()):
        users = [s for s, card in SAMPLER_CARDS.items() if name in vars(card.options())]
        help_text = f"Option of {', '.join(users)} (sample.{name}) [default: {default}]."
        value_type = {bool: bool, int: int, float: float}.get(type(default), str)
        command = click.option(f"--{name.replace('_', '-')}", name, type=value_type, default=None, help=help_text)(command)
    return command


@click.command(context_settings={"show_default": True})
@click.option("--model", "model", required=True,
              help="A folder (models/ddpm) or checkpoint file, an MLflow run id, or models:/<name>/<version>, models:/<name>@<alias>.")  # fmt: skip
@click.option("--seeds", default="0-63", help="Image seeds, EDM-style: 0-63, 1,5,9 or 0-9,100-109. One image per seed.")
@click.option("--sampler", type=click.Choice(list(SAMPLER_CARDS)), default="ddpm", help="Any registered sampler (docs/samplers.md).")
@click.option("--steps", type=int, default=None, help=f"Sampling steps on the grid [default: {DEFAULT_STEPS}, or T if smaller].")
@click.option("--spacing", type=click.Choice(list(SPACINGS)), default="uniform", help="The grid of timesteps.")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance weight w (conditional models) [default: 0].")
@click.option("--class", "classes", default=None, help="Conditional models: the classes asked for, taken in turn (3, or 0-9) [default: every class].")
@_option_flags
@click.option("--clip-x0/--no-clip-x0", default=True, help="Clip the predicted x_0 to [-1, 1] at each step (sample.clip_x0).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="auto", help="Network precision: auto = the faster of fp32 and bf16, timed on this machine (cached).")
@click.option("--channels-last", "channels_last", type=click.Choice(["auto", "true", "false"]), default="auto",
              help="NHWC network: auto = the faster layout, timed on this machine (cached). To redraw the sample stage's images bit for bit, "
                   "give its precision and layout (samples/sampling.json: execution).")  # fmt: skip
@click.option("--device", type=click.Choice(list(DEVICES)), default="auto", help="auto = cuda, then mps, then cpu.")
@click.option("--batch-size", type=click.IntRange(1), default=500, help="Images per batch (memory only: image j depends on its seed alone).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network (pays off for many images on a GPU).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="generated", help="Folder for <seed>.png, grid.png and generation.json.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds files (only once the new images are all written).")
def generate(model: str, seeds: str, sampler: str, steps: int | None, spacing: str, guidance: float | None, classes: str | None,
             clip_x0: bool, precision: str, channels_last: str, device: str, batch_size: int, compile_: bool, out: Path, overwrite: bool,
             **options: Any) -> None:  # fmt: skip
    """Draw images from a trained model with any sampler, grid, step count, guidance weight and
    class, outside the pipeline: one PNG per seed, grid.png and generation.json (model, sampler,
    grid, steps, NFE, seeds, precision, device) in --out.

    Image j depends only on its seed (and class): the `sample` stage's image i is seed
    sample.seed * 1000003 + i, e.g. --seeds 1000003-1000066 redraws its first 64 with
    sample.seed = 1. Every value is checked against the model before any network is built.

    \b
      ddpmlab generate --model models/ddpm --seeds 0-63 --sampler dpmpp_2m --steps 10
      ddpmlab generate --model models:/ddpmlab@champion --seeds 0-15 --out champion
      ddpmlab generate --model <run id> --sampler ddim --steps 20 --eta 0.5
    """
    try:
        seed_list = parse_numbers(seeds, "--seeds")
        class_list = parse_numbers(classes, "--class") if classes is not None else None
        check_destination(out, overwrite)
        with open_source(model) as source:
            info, payload = read_checkpoint(source.checkpoint)
            request = build_request(
                info, sampler=sampler, steps=steps if steps is not None else default_steps(info.T), seeds=seed_list, spacing=spacing,
                guidance=guidance, classes=class_list, options=options, clip_x0=clip_x0, precision=precision, batch_size=batch_size,
            )  # fmt: skip
            resolved = resolve_device(device)
            trained = TrainedDiffusion.from_payload(info, payload, resolved, source.checkpoint)
            described = {"given": model, **source.described}
    except (ValueError, SourceError, CheckpointError, FileExistsError, RuntimeError) as e:
        message = "\n".join(f"  {p}" for p in e.problems) if isinstance(e, BadRequest) else str(e)
        raise click.ClickException(f"nothing generated:\n{message}" if isinstance(e, BadRequest) else message) from e

    batch = min(batch_size, len(request.seeds))
    network = trained.sampling_network(request.precision, compile_, switch(channels_last), batch, planned_calls(len(request.seeds), batch, request.run.nfe))
    run = request.run
    with staged_folder(out) as folder, tqdm(total=len(seed_list) * run.nfe, desc="generate", unit="img-eval", unit_scale=True) as bar:

        def progress(step: StepInfo, per_step: float = run.nfe / run.steps) -> None:
            if step.step > 0:
                bar.update(step.x.shape[0] * per_step)

        started = time.perf_counter()
        samples = draw_images(trained, network, run, request.seeds, request.labels(), clip_x0=request.clip_x0, batch_size=batch_size,
                              device=resolved, callback=progress)  # fmt: skip
        seconds = time.perf_counter() - started
        record = {
            "model": {**described, "checkpoint_step": info.step, **info.summary()},
            **request.to_dict(),
            "device": str(resolved),
            "execution": network.execution_record.summary(),  # precision, memory format, compile, machine
            "seconds": round(seconds, 3),
            "images": [image_name(s) for s in request.seeds],
            "ddpmlab_version": __version__,
            "torch_version": torch.__version__,
        }
        write_outputs(folder, samples, request.seeds, record)
    click.echo(f"generated {len(seed_list)} images ({run.label()}, {run.nfe} NFE) on {resolved} in {seconds:.1f}s: {out / 'grid.png'}")
