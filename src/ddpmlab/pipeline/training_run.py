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
from pathlib import Path

import click
import torch
from tqdm import tqdm

from ddpmlab.config import Params, flatten
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.data.image_set import ImageSet
from ddpmlab.nn.acceleration import resolve_precision
from ddpmlab.nn.unet import count_parameters
from ddpmlab.pipeline import model_registry, tracking
from ddpmlab.pipeline.stage_io import read_json, write_json
from ddpmlab.training import checkpoint, distributed
from ddpmlab.training.distributed import Distributed
from ddpmlab.training.loop import LogRecord, TrainState, new_train_state, train
from ddpmlab.training.resume import fingerprint, latest_checkpoint, prune_checkpoints
from ddpmlab.training.trained import KIND, build_unet, save_snapshot, save_training

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
    training_params = params.training_dict()
    cfg = params.train
    precision = str(resolve_precision(cfg.precision, device)).removeprefix("torch.")  # what `auto` became here
    train_set = ImageSet.load(data_dir / "train.npz")
    card = read_json(data_dir / "card.json")
    in_channels, image_size = card["channels"], card["image_size"]
    process = DiffusionProcess.from_schedule(params.schedule, params.T)
    if dist.is_main:
        write_schedule_csv(process, schedule_path)

    num_classes = card["num_classes"] if params.model.conditional else 0
    if params.model.conditional and num_classes < 2:
        raise click.ClickException(f"model.conditional: true needs labelled data with 2 or more classes; {card['source']} has {card['num_classes']}")
    build = lambda: build_unet(training_params["model"], in_channels, image_size, cfg.learn_variance, num_classes)
    state = new_train_state(build, cfg, cfg.seed, device, dist)  # train.seed: training randomness only
    model = state.model
    folder = resume_dir / fingerprint(training_params, data_dir / "train.npz", code)
    snapshots = folder / "snapshots"  # moved to <out>/snapshots once training ends
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

    images = torch.from_numpy(train_set.images).to(device)
    labels = torch.from_numpy(train_set.labels).to(device) if num_classes else None
    run_name = f"{params.schedule}-T{params.T}-seed{cfg.seed}-train"
    started = time.perf_counter()
    tags = tracking.config_tags(params)
    run = tracking.start_run(params.tracking.experiment, run_name, "train", resume_run_id=run_id, tags=tags) if dist.is_main else contextlib.nullcontext()
    with run as run_id:
        if dist.is_main and state.step == 0:
            tracking.log_params(flatten(training_params))
            tracking.log_params({"num_parameters": count_parameters(model), "device_resolved": str(device), "precision_resolved": precision})
            tracking.log_artifact(data_dir / "real_grid.png", "images")
            tracking.log_artifact(data_dir / "card.json", "data")
            tracking.log_params(dataset_params(card))
        # Resumed: MLflow already has the points up to the crash; replayed steps give the same loss, so skip them.
        logged_up_to = tracking.last_logged_step(run_id, "loss") if dist.is_main and state.step > 0 else -1
        bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", disable=not dist.is_main)

        def on_log(record: LogRecord) -> None:
            row = {"step": record.step, "loss": round(record.loss, 6), "lr": record.lr, "images_per_s": round(record.images_per_s, 1)}
            log_rows.append(row)
            if record.step > logged_up_to:
                tracking.log_metrics({"loss": record.loss, "lr": record.lr, "images_per_s": record.images_per_s}, step=record.step)
            bar.set_postfix(loss=f"{record.loss:.4f}", img_s=f"{record.images_per_s:.0f}")

        def on_checkpoint(s: TrainState) -> None:
            save_snapshot(s, training_params, in_channels, image_size, snapshots / f"step-{s.step:07d}.pt")
            extra = {"log": log_rows, "run_id": run_id}  # in the same file as the weights: one atomic write
            save_training(s, training_params, in_channels, image_size, folder / f"step-{s.step:07d}.pt", extra)
            prune_checkpoints(folder, cfg.keep_checkpoints)

        train(
            state, process, images, cfg, loss_fn=TrainingLoss.from_params(params), hflip=params.data.hflip, labels=labels, dist=dist,
            on_step=lambda _: bar.update(1), on_log=on_log if dist.is_main else None, on_checkpoint=on_checkpoint,
        )  # fmt: skip
        bar.close()
        distributed.stop(dist)  # every rank is done: the others leave now rather than wait on rank 0's writes
        if not dist.is_main:
            return
        seconds = time.perf_counter() - started
        out.mkdir(parents=True, exist_ok=True)
        save_training(state, training_params, in_channels, image_size, out / "model.pt")
        shutil.rmtree(out / "snapshots", ignore_errors=True)  # from an earlier run outside DVC
        (out / "snapshots").mkdir()
        for snapshot in sorted(snapshots.glob("step-*.pt")):  # copies: the resume folder keeps them until it goes, last
            shutil.copy2(snapshot, out / "snapshots" / snapshot.name)
        write_log_csv(log_rows, log_path)
        summary = {
            "run_id": tracking.resolve(run_id),  # the server's id, once a run started during an outage is on it
            "step": state.step,
            "seconds_this_session": round(seconds, 1),
            "num_parameters": count_parameters(model),
            "device": str(device),
            "processes": dist.world_size,
            "precision": precision,
            "final_loss": log_rows[-1]["loss"] if log_rows else None,
            "params": training_params,
        }
        write_json(out / "train.json", summary)
        tracking.log_metrics({"train_seconds": seconds})
        tracking.log_artifact(out / "model.pt", "checkpoint")
        tracking.log_artifact(out / "train.json", "checkpoint")
        model_registry.log_model(out / "model.pt", run_id, params)  # the pyfunc (model/), and a registry version if asked
        # Kept until the server has every record: if it fails the stage, a rerun resumes at the last step
        # (no retraining), in the same MLflow run, and the journal's leftovers go first.
        save_training(state, training_params, in_channels, image_size, folder / f"step-{state.step:07d}.pt", {"log": log_rows, "run_id": run_id})
    tracking.finish()
    shutil.rmtree(folder, ignore_errors=True)  # finished: the outputs now hold everything
    where = f"{device} x {dist.world_size} processes" if dist.enabled else str(device)
    click.echo(f"trained {state.step} steps in {seconds:.0f}s on {where}; final loss {summary['final_loss']}")
