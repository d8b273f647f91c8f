"""DVC stage `train`: fit the network with L_simple (DDPM Algorithm 1; eps, x0 or v target), logging to MLflow.

Interrupted runs continue: every `train.checkpoint_every` steps the full training state
(weights, EMA, optimizer, LR schedule, step, every RNG, the log so far) is written atomically
to --resume-dir/<fingerprint>/, which is not a DVC output, so `dvc repro` after a crash or a
kill -9 finds it and resumes; the newest `train.keep_checkpoints` are kept. The fingerprint
covers the training params, the data and the training code, so changed params or code start
afresh. The EMA weights at each of those steps are kept as snapshots (<out>/snapshots/) for the
FID-over-training curve.

With `train.processes` > 1 the stage relaunches itself under torchrun (DDP, one process per
GPU, or gloo on CPU); it can also be started by torchrun directly, e.g. across nodes.
Only rank 0 writes files and MLflow runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline import code_deps, tracking
from ddpmlab.pipeline.stage_io import params_option, read_params, stage_errors
from ddpmlab.pipeline.training_run import run_training
from ddpmlab.training import distributed

# The code that decides what training computes: this script and every ddpmlab module it imports
# (config builds the loss, data the batches, unet the network...), the same files dvc.yaml lists as
# `train`'s deps (tests/test_dvc_deps.py). A checkpoint written by other code is not resumed, even
# when its tensors would still fit.
TRAINING_CODE = (Path(__file__).resolve(), *code_deps.import_closure(Path(__file__)))


@click.command(help=__doc__)
@params_option
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for model.pt and train.json.")
@click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of loss / lr / throughput per logged step.")
@click.option("--schedule", "schedule_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of beta_t, alpha-bar_t, SNR.")
@click.option("--resume-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for resumable training state.")
@stage_errors
def main(params_path: str, data_dir: Path, out: Path, log_path: Path, schedule_path: Path, resume_dir: Path) -> None:
    params = read_params(params_path)
    processes = params.train.processes
    dist = distributed.from_env()
    if processes > 1 and not distributed.launched_by_torchrun():
        command = distributed.relaunch_command(processes, sys.argv)
        click.echo(f"train.processes = {processes}: relaunching under torchrun: {' '.join(command)}")
        sys.stdout.flush()
        os.execv(sys.executable, command)  # torchrun replaces this process, so a kill or Ctrl-C reaches it
    if dist.world_size != processes:
        raise click.ClickException(
            f"torchrun started {dist.world_size} processes but train.processes = {processes}; set train.processes to the total "
            "number of processes (WORLD_SIZE) so the params record how the model was trained"
        )
    if dist.is_main:
        tracking.check_access(params.tracking.experiment)  # wrong credentials fail now, not after the first checkpoint
    try:
        dist, device = distributed.start(resolve_device(params.device))
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    finished = False
    try:
        run_training(params, dist, device, data_dir, out, log_path, schedule_path, resume_dir, TRAINING_CODE)
        finished = True
    finally:
        distributed.stop(dist, wait_for_others=finished)


if __name__ == "__main__":
    main()
