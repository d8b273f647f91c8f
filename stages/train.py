"""DVC stage `train`: fit the network with L_simple (DDPM Algorithm 1; eps, x0 or v target), logging to MLflow.

Interrupted runs continue: every `train.checkpoint_every` steps the full training state is
saved under --resume-dir (not a DVC output, so `dvc repro` keeps it), keyed by a
fingerprint of the training params and data; a rerun with the same fingerprint resumes.
The EMA weights at each of those steps are kept as snapshots (<out>/snapshots/) for the
FID-over-training curve of `evaluate`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from pathlib import Path

import click
import torch
from tqdm import tqdm

from ddpmlab import checkpoint, tracking
from ddpmlab.acceleration import resolve_precision
from ddpmlab.cli import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.config import flatten
from ddpmlab.data import ImageSet
from ddpmlab.devices import resolve_device
from ddpmlab.diffusion import DiffusionProcess
from ddpmlab.trained import KIND, build_unet, save_snapshot, save_training
from ddpmlab.training import LogRecord, TrainState, new_train_state, train
from ddpmlab.unet import count_parameters

LOG_FIELDS = ("step", "loss", "lr", "images_per_s")


def fingerprint(training_params: dict, data_file: Path) -> str:
    digest = hashlib.sha256(json.dumps(training_params, sort_keys=True, default=list).encode())
    digest.update(data_file.read_bytes())
    return digest.hexdigest()[:16]


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
    training_params = params.training_dict()
    cfg = params.train
    device = resolve_device(params.device)
    precision = str(resolve_precision(cfg.precision, device)).removeprefix("torch.")  # what `auto` became here
    train_set = ImageSet.load(data_dir / "train.npz")
    card = read_json(data_dir / "card.json")
    in_channels, image_size = card["channels"], card["image_size"]
    process = DiffusionProcess.from_schedule(params.schedule, params.T)
    write_schedule_csv(process, schedule_path)

    state = new_train_state(lambda: build_unet(training_params["model"], in_channels, image_size, cfg.learn_variance), cfg, params.seed, device)
    model = state.model
    key = fingerprint(training_params, data_dir / "train.npz")
    resume_state, resume_info = resume_dir / f"{key}.pt", resume_dir / f"{key}.json"
    snapshots = resume_dir / f"{key}-snapshots"  # moved to <out>/snapshots once training ends
    log_rows: list[dict] = []
    run_id = None
    if resume_state.is_file() and resume_info.is_file():
        state.load_state_dict(checkpoint.load(resume_state, KIND, map_location=device))
        info = json.loads(resume_info.read_text())
        log_rows, run_id = info["log"], info["run_id"]
        click.echo(f"resuming training from step {state.step} ({resume_state})")

    images = torch.from_numpy(train_set.images).to(device)
    run_name = f"{params.schedule}-T{params.T}-train"
    started = time.perf_counter()
    with tracking.start_run(params.tracking.experiment, run_name, "train", resume_run_id=run_id) as run_id:
        if state.step == 0:
            tracking.log_params(flatten(training_params))
            tracking.log_params({"num_parameters": count_parameters(model), "device_resolved": str(device), "precision_resolved": precision})
            tracking.log_artifact(data_dir / "real_grid.png", "images")
            tracking.log_artifact(data_dir / "card.json", "data")
            tracking.log_params(dataset_params(card))
        bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step")

        def on_log(record: LogRecord) -> None:
            row = {"step": record.step, "loss": round(record.loss, 6), "lr": record.lr, "images_per_s": round(record.images_per_s, 1)}
            log_rows.append(row)
            tracking.log_metrics({"loss": record.loss, "lr": record.lr, "images_per_s": record.images_per_s}, step=record.step)
            bar.set_postfix(loss=f"{record.loss:.4f}", img_s=f"{record.images_per_s:.0f}")

        def on_checkpoint(s: TrainState) -> None:
            save_snapshot(s, training_params, in_channels, image_size, snapshots / f"step-{s.step:07d}.pt")
            save_training(s, training_params, in_channels, image_size, resume_state)
            write_json(resume_info, {"run_id": run_id, "log": log_rows})

        train(state, process, images, cfg, loss_fn=params.training_loss(), hflip=params.data.hflip, on_step=lambda _: bar.update(1), on_log=on_log, on_checkpoint=on_checkpoint)
        bar.close()
        seconds = time.perf_counter() - started
        out.mkdir(parents=True, exist_ok=True)
        save_training(state, training_params, in_channels, image_size, out / "model.pt")
        shutil.rmtree(out / "snapshots", ignore_errors=True)  # from an earlier run outside DVC
        (out / "snapshots").mkdir()
        for snapshot in sorted(snapshots.glob("step-*.pt")):
            shutil.move(snapshot, out / "snapshots" / snapshot.name)
        write_log_csv(log_rows, log_path)
        summary = {
            "run_id": run_id,
            "step": state.step,
            "seconds_this_session": round(seconds, 1),
            "num_parameters": count_parameters(model),
            "device": str(device),
            "precision": precision,
            "final_loss": log_rows[-1]["loss"] if log_rows else None,
            "params": training_params,
        }
        write_json(out / "train.json", summary)
        tracking.log_metrics({"train_seconds": seconds})
        tracking.log_artifact(out / "model.pt", "checkpoint")
        tracking.log_artifact(out / "train.json", "checkpoint")
    for path in (resume_state, resume_info):
        path.unlink(missing_ok=True)
    if snapshots.is_dir():
        snapshots.rmdir()
    click.echo(f"trained {state.step} steps in {seconds:.0f}s on {device}; final loss {summary['final_loss']}")


if __name__ == "__main__":
    main()
