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

from pathlib import Path

import click

from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.sampling_run import run_sampling
from ddpmlab.pipeline.stage_io import params_option, read_params, stage_errors


@click.command(help=__doc__)
@params_option
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with model.pt and train.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for the samples.")
@click.option("--grids", "grids_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The `search` stage's grids (for sample.spacing searched).")
@stage_errors
def main(params_path: str, model_dir: Path, out: Path, grids_path: Path | None) -> None:
    params = read_params(params_path)
    tracking.check_access(params.tracking.experiment)  # the samples are logged at the end: wrong credentials fail before sampling
    summary = run_sampling(params, model_dir, out, grids_path)
    tracking.finish()
    click.echo(summary)


if __name__ == "__main__":
    main()
