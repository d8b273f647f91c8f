"""The train stage's work: train or resume, then write the model, snapshots, logs and MLflow records.

Resumable state goes to ``resume_dir/<fingerprint>/`` (``training.resume``) every
``train.checkpoint_every`` steps, together with the log so far and the MLflow run id, so a
resumed run logs each step once. The EMA weights at those steps are kept as snapshots for
the FID-over-training curve and moved to ``<out>/snapshots`` when training ends.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from tqdm import tqdm

from ddpmlab.config import Params, flatten
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.data.image_set import ImageSet
from ddpmlab.model import checkpoint
from ddpmlab.model.trained import KIND, build_unet
from ddpmlab.nn.unet import count_parameters
from ddpmlab.pipeline import model_registry, tracking
from ddpmlab.pipeline.stage_io import read_json, write_json
from ddpmlab.training import distributed
from ddpmlab.training.distributed import Distributed
from ddpmlab.training.execution_probe import training_execution
from ddpmlab.training.loop import LogRecord, TrainState, new_train_state, train
from ddpmlab.training.resume import fingerprint, latest_checkpoint, prune_checkpoints
from ddpmlab.training.saving import save_snapshot, save_training

LOG_FIELDS = ("step", "loss", "lr", "images_per_s")


def dataset_params(card: dict) -> dict:
    """The dataset card's identity as run params, so runs on different data are told apart in the MLflow UI."""
    return {
        "dataset.source": card["source"],
        "dataset.train_count": card["train"]["count"],
        "dataset.test_count": card["test"]["count"],
        "dataset.num_classes": card["num_classes"],
        "dataset.sha256": card["content_sha256"][:16],
    }


def write_schedule_csv(process: DiffusionProcess, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "beta", "alpha_bar", "log10_snr"])
        snr = process.alpha_bars / (1 - process.alpha_bars)
        for i in range(process.T):
            writer.writerow([i + 1, f"{process.betas[i]:.8g}", f"{process.alpha_bars[i]:.8g}", f"{torch.log10(snr[i]):.6g}"])


def write_log_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def run_training(
    params: Params, dist: Distributed, device: torch.device, data_dir: Path, out: Path, log_path: Path, schedule_path: Path, resume_dir: Path,
    code: tuple[Path, ...],
) -> None:
    """Train (or resume) the model of ``params`` on ``data_dir``'s train.npz and write the stage's outputs.

    ``code`` is the training code the resume fingerprint covers (the stage script's import closure).
    Every rank calls this; only rank 0 writes files and MLflow records.
    """
    setup = _set_up(params, dist, device, data_dir, schedule_path)
    cfg = params.train
    build = lambda: _build_model(setup)
    execution = training_execution(build, cfg, device, dist)  # `auto` timed on this machine (or its cached choice)
    state = new_train_state(build, cfg, cfg.seed, device, dist, execution)  # train.seed: training randomness only
    folder = resume_dir / fingerprint(setup.training_params, data_dir / "train.npz", code)
    snapshots = folder / "snapshots"  # moved to <out>/snapshots once training ends
    log_rows, run_id = _resume(state, folder, dist)
    images = torch.from_numpy(setup.train_set.images).to(device)
    labels = torch.from_numpy(setup.train_set.labels).to(device) if setup.num_classes else None
    run_name = f"{params.schedule}-T{params.T}-seed{cfg.seed}-train"
    started = time.perf_counter()
    tags = tracking.config_tags(params)
    run = tracking.start_run(params.tracking.experiment, run_name, "train", resume_run_id=run_id, tags=tags) if dist.is_main else contextlib.nullcontext()
    with run as run_id:
        if dist.is_main and state.step == 0:
            _log_run_start(setup, state, device, data_dir)
        if dist.is_main:
            tracking.set_tags(state.execution.tags())  # also after a resume: this session's machine
        _train_with_progress(setup, state, images, labels, dist, folder, snapshots, log_rows, run_id)
        distributed.stop(dist)  # every rank is done: the others leave now rather than wait on rank 0's writes
        if not dist.is_main:
            return
        seconds = time.perf_counter() - started
        summary = _write_outputs(setup, state, dist, device, out, log_path, snapshots, log_rows, run_id, seconds)
        _log_outputs(setup, state, out, folder, log_rows, run_id, seconds)
    tracking.finish()
    shutil.rmtree(folder, ignore_errors=True)  # finished: the outputs now hold everything
    where = f"{device} x {dist.world_size} processes" if dist.enabled else str(device)
    click.echo(f"trained {state.step} steps in {seconds:.0f}s on {where}; final loss {summary['final_loss']}")


@dataclass(frozen=True)
class _Setup:
    """What one training run is made of, fixed before it starts: its params, its data and its diffusion process."""

    params: Params
    training_params: dict  # what the model depends on: in its checkpoints, logged with its run
    train_set: ImageSet
    card: dict  # the dataset card
    in_channels: int
    image_size: int
    process: DiffusionProcess
    num_classes: int  # 0: an unconditional model

    def save(self, state: TrainState, path: Path, extra: dict | None = None) -> None:
        """Everything to resume training or to sample, in one file (``training.saving.save_training``)."""
        save_training(state, self.training_params, self.in_channels, self.image_size, path, extra)


def _set_up(params: Params, dist: Distributed, device: torch.device, data_dir: Path, schedule_path: Path) -> _Setup:
    """Read the train set and its card, make the diffusion process and write its schedule CSV (rank 0);
    refuse a conditional model on data with fewer than two classes."""
    training_params = params.training_dict()
    train_set = ImageSet.load(data_dir / "train.npz")
    card = read_json(data_dir / "card.json")
    in_channels, image_size = card["channels"], card["image_size"]
    process = DiffusionProcess.from_schedule(params.schedule, params.T)
    if dist.is_main:
        write_schedule_csv(process, schedule_path)
    num_classes = card["num_classes"] if params.model.conditional else 0
    if params.model.conditional and num_classes < 2:
        raise click.ClickException(f"model.conditional: true needs labelled data with 2 or more classes; {card['source']} has {card['num_classes']}")
    return _Setup(params, training_params, train_set, card, in_channels, image_size, process, num_classes)


def _build_model(setup: _Setup) -> torch.nn.Module:
    """A fresh U-Net for ``setup``'s params and data (``new_train_state`` calls it after seeding)."""
    learn_variance = setup.params.train.learn_variance
    return build_unet(setup.training_params["model"], setup.in_channels, setup.image_size, learn_variance, setup.num_classes)


def _resume(state: TrainState, folder: Path, dist: Distributed) -> tuple[list[dict], str | None]:
    """Load the latest checkpoint in the resume ``folder`` into ``state``, if any (every rank loads the one rank 0 chose).

    Returns the log rows so far and the MLflow run id to continue: none and None when starting afresh.
    """
    log_rows: list[dict] = []
    run_id = None
    saved, saved_path = latest_checkpoint(folder, lambda message: click.echo(message, err=True)) if dist.is_main else (None, None)
    chosen = distributed.broadcast_object(str(saved_path) if saved_path else None, dist)  # every rank resumes from rank 0's choice
    if chosen is not None and saved is None:
        saved, saved_path = checkpoint.load(chosen, KIND, map_location="cpu"), Path(chosen)
    if saved is not None:
        state.load_state_dict(saved, dist)
        log_rows, run_id = list(saved["log"]), saved["run_id"]
        if dist.is_main:
            click.echo(f"resuming training from step {state.step} ({saved_path})")
    return log_rows, run_id


def _log_run_start(setup: _Setup, state: TrainState, device: torch.device, data_dir: Path) -> None:
    """Log a new run's params, the real images' grid and the dataset card to MLflow (rank 0, step 0 only)."""
    tracking.log_params(flatten(setup.training_params))
    tracking.log_params({"num_parameters": count_parameters(state.model), "device_resolved": str(device)})
    tracking.log_artifact(data_dir / "real_grid.png", "images")
    tracking.log_artifact(data_dir / "card.json", "data")
    tracking.log_params(dataset_params(setup.card))


def _train_with_progress(
    setup: _Setup, state: TrainState, images: torch.Tensor, labels: torch.Tensor | None, dist: Distributed, folder: Path,
    snapshots: Path, log_rows: list[dict], run_id: str | None,
) -> None:  # fmt: skip
    """Train from ``state.step`` to train.steps under a progress bar; rank 0 logs each record to ``log_rows`` and MLflow,
    and checkpoints into the resume ``folder`` (EMA ``snapshots`` beside)."""
    params, cfg = setup.params, setup.params.train
    # Resumed: MLflow already has the points up to the crash; replayed steps give the same loss, so skip them.
    logged_up_to = tracking.last_logged_step(run_id, "loss") if dist.is_main and state.step > 0 else -1
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", disable=not dist.is_main)
    on_log = _log_recorder(log_rows, logged_up_to, bar)
    on_checkpoint = _checkpointer(setup, folder, snapshots, log_rows, run_id)
    train(
        state, setup.process, images, cfg, loss_fn=TrainingLoss.from_params(params), hflip=params.data.hflip, labels=labels,
        dist=dist, on_step=lambda _: bar.update(1), on_log=on_log if dist.is_main else None, on_checkpoint=on_checkpoint,
    )  # fmt: skip
    bar.close()


def _log_recorder(log_rows: list[dict], logged_up_to: int, bar: tqdm) -> Callable[[LogRecord], None]:
    """``train``'s on_log: append each record to ``log_rows`` (in place), log it to MLflow unless a run
    before a resume already did (steps up to ``logged_up_to``), and show the loss on the ``bar``."""

    def on_log(record: LogRecord) -> None:
        row = {"step": record.step, "loss": round(record.loss, 6), "lr": record.lr, "images_per_s": round(record.images_per_s, 1)}
        log_rows.append(row)
        if record.step > logged_up_to:
            tracking.log_metrics({"loss": record.loss, "lr": record.lr, "images_per_s": record.images_per_s}, step=record.step)
        bar.set_postfix(loss=f"{record.loss:.4f}", img_s=f"{record.images_per_s:.0f}")

    return on_log


def _checkpointer(
    setup: _Setup, folder: Path, snapshots: Path, log_rows: list[dict], run_id: str | None
) -> Callable[[TrainState], None]:
    """``train``'s on_checkpoint: an EMA snapshot into ``snapshots``, then the resumable state with the log so far
    (``log_rows``, read at each checkpoint) and the MLflow run id into the resume ``folder``, whose older checkpoints go."""

    def on_checkpoint(s: TrainState) -> None:
        save_snapshot(s, setup.training_params, setup.in_channels, setup.image_size, snapshots / f"step-{s.step:07d}.pt")
        extra = {"log": log_rows, "run_id": run_id}  # in the same file as the weights: one atomic write
        setup.save(s, folder / f"step-{s.step:07d}.pt", extra)
        prune_checkpoints(folder, setup.params.train.keep_checkpoints)
        tracking.checkpoint()  # the journal on disk holds at least what this checkpoint's log does

    return on_checkpoint


def _write_outputs(
    setup: _Setup, state: TrainState, dist: Distributed, device: torch.device, out: Path, log_path: Path, snapshots: Path,
    log_rows: list[dict], run_id: str | None, seconds: float,
) -> dict:  # fmt: skip
    """Write the stage's outputs (rank 0): model.pt, copies of the EMA ``snapshots``, the log CSV and train.json.
    Returns train.json's summary."""
    out.mkdir(parents=True, exist_ok=True)
    setup.save(state, out / "model.pt")
    shutil.rmtree(out / "snapshots", ignore_errors=True)  # from an earlier run outside DVC
    (out / "snapshots").mkdir()
    for snapshot in sorted(snapshots.glob("step-*.pt")):  # copies: the resume folder keeps them until it goes, last
        shutil.copy2(snapshot, out / "snapshots" / snapshot.name)
    write_log_csv(log_rows, log_path)
    summary = {
        "run_id": tracking.resolve(run_id),  # the server's id, once a run started during an outage is on it
        "step": state.step,
        "seconds_this_session": round(seconds, 1),
        "num_parameters": count_parameters(state.model),
        "device": str(device),
        "processes": dist.world_size,
        "execution": state.execution.summary(),  # how it ran: precision, memory format, compile, threads, machine
        "final_loss": log_rows[-1]["loss"] if log_rows else None,
        "params": setup.training_params,
    }
    write_json(out / "train.json", summary)
    return summary


def _log_outputs(
    setup: _Setup, state: TrainState, out: Path, folder: Path, log_rows: list[dict], run_id: str | None, seconds: float
) -> None:
    """Log the training time, model.pt and train.json to MLflow and the model to the registry (rank 0), then save
    the final state into the resume ``folder``."""
    tracking.log_metrics({"train_seconds": seconds})
    tracking.log_artifact(out / "model.pt", "checkpoint")
    tracking.log_artifact(out / "train.json", "checkpoint")
    model_registry.log_model(out / "model.pt", run_id, setup.params)  # the pyfunc (model/), and a registry version if asked
    # Kept until the server has every record: if it fails the stage, a rerun resumes at the last step
    # (no retraining), in the same MLflow run, and the journal's leftovers go first.
    setup.save(state, folder / f"step-{state.step:07d}.pt", {"log": log_rows, "run_id": run_id})
