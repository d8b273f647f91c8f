"""DVC stage `evaluate`: FID, IS and KID at every sampling step count, and the NLL bound.

Features come from the dataset classifier (stage `classifier`), registered with
torch-fidelity. The same metrics for real training images vs the test split, with the
same number of images, give the floor every generated number should be read against.
The NLL is the variational bound in bits/dim (Ho et al. eq. 5) on evaluate.nll_images
test images, with the model's reverse variance set by sample.variance.
Each step count becomes one MLflow run nested under the training run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ddpmlab import tracking
from ddpmlab.cli import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.config import Params, flatten
from ddpmlab.data import ImageSet, to_model_range
from ddpmlab.devices import resolve_device
from ddpmlab.likelihood import summarize, vlb_terms
from ddpmlab.metrics import EXTRACTOR, fidelity_metrics
from ddpmlab.trained import TrainedDiffusion

STEP_FIELDS = (
    "steps", "fid", "fid_ratio", "is_mean", "is_ratio", "kid_mean", "precision", "recall",
    "seconds_per_sample", "images_per_s", "network_evals_per_sample",
)  # fmt: skip


def ratio(generated: float, real: float) -> float | None:
    return round(generated / real, 4) if real else None


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in metrics.items()}


def estimate_nll(params: Params, model_dir: Path, test: ImageSet, device: torch.device) -> tuple[dict, torch.Tensor] | tuple[None, None]:
    """(summary, per-image terms (N, T + 1)) of the bound on the first evaluate.nll_images test images."""
    count = min(params.evaluate.nll_images, len(test))
    if count == 0:
        return None, None
    trained = TrainedDiffusion.load(model_dir / "model.pt", device)
    x0 = to_model_range(torch.from_numpy(test.images[:count])).to(device)
    with tqdm(total=trained.process.T, desc="nll", unit="t") as bar:
        terms = vlb_terms(
            trained.model, trained.process, x0, objective=trained.params["objective"], variance=params.sample.variance,
            clip_x0=params.sample.clip_x0, generator=torch.Generator().manual_seed(params.seed), on_step=lambda _: bar.update(1),
        )  # fmt: skip
    summary = {k: float(f"{v:.6g}") for k, v in summarize(terms).items()}  # L_T is ~1e-6: keep significant digits
    return {**summary, "images": count, "variance": params.sample.variance}, terms


def write_nll_terms(terms: torch.Tensor, path: Path) -> None:
    """One row per term: t = 1 is L_0 (decoder), t = 2..T the KL L_{t-1}, t = T + 1 the prior L_T."""
    mean = terms.mean(dim=0)
    T = terms.shape[1] - 1
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "term", "bits_per_dim"])
        for i in range(T + 1):
            name = "L_0" if i == 0 else ("L_T" if i == T else f"L_{i}")
            writer.writerow([i + 1, name, f"{mean[i].item():.6g}"])


def write_steps_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@click.command(help=__doc__)
@params_option
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder.")
@click.option("--samples", "samples_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `sample`.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `train`.")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier checkpoint.")
@click.option("--classifier-metrics", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier accuracy JSON.")
@click.option("--out", "metrics_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="metrics.json to write.")
@click.option("--steps-csv", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of the metrics per step count.")
@click.option("--nll-terms", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of the NLL bound's terms per t.")
@stage_errors
def main(params_path, data_dir, samples_dir, model_dir, classifier_path, classifier_metrics, metrics_path, steps_csv, nll_terms) -> None:
    params = read_params(params_path)
    cfg = params.evaluate
    device = resolve_device(params.device)
    sampling = read_json(samples_dir / "sampling.json")
    train_info = read_json(model_dir / "train.json")
    accuracy = read_json(classifier_metrics)["test_accuracy"]
    train, test = ImageSet.load(data_dir / "train.npz"), ImageSet.load(data_dir / "test.npz")
    n = min(sampling["num_samples"], len(train))
    real = train.images[np.random.default_rng(params.seed).choice(len(train), size=n, replace=False)]

    common = dict(classifier_path=classifier_path, kid_subset_size=cfg.kid_subset_size, batch_size=cfg.batch_size, cuda=device.type == "cuda", seed=params.seed)
    click.echo(f"evaluating {sampling['num_samples']} generated images per step count and {n} real training images against {len(test)} test images ({EXTRACTOR})")
    floor = rounded(fidelity_metrics(real, test.images, **common))
    by_steps = []
    for entry in sampling["runs"]:
        with np.load(samples_dir / entry["folder"] / "samples.npz") as f:
            generated = f["images"]
        gen = rounded(fidelity_metrics(generated, test.images, **common))
        row = {
            "steps": entry["steps"], **gen, "fid_ratio": ratio(gen["fid"], floor["fid"]), "is_ratio": ratio(gen["is_mean"], floor["is_mean"]),
            "seconds_per_sample": entry["seconds_per_sample"], "images_per_s": round(1 / entry["seconds_per_sample"], 2),
            "network_evals_per_sample": entry["network_evals_per_sample"],
        }  # fmt: skip
        by_steps.append(row)
        click.echo(
            f"  {entry['steps']:>5} steps: FID {gen['fid']:.3f} (x{row['fid_ratio']})  IS {gen['is_mean']:.3f}  KID {gen['kid_mean']:.4f}  "
            f"precision {gen['precision']:.3f}  recall {gen['recall']:.3f}  {row['images_per_s']:.1f} img/s"
        )
    nll, terms = estimate_nll(params, model_dir, test, device)

    headline = by_steps[0]
    metrics = {
        **{k: headline[k] for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "fid_ratio", "is_ratio", "seconds_per_sample")},
        "sample_steps": headline["steps"],
        "nll_bits_per_dim": nll["bits_per_dim"] if nll else None,
        "real": floor,
        "classifier_accuracy": accuracy,
        "by_steps": {str(row["steps"]): {k: v for k, v in row.items() if k != "steps"} for row in by_steps},
        "nll": nll,
        "context": {"extractor": EXTRACTOR, "reference": "test", "num_generated": sampling["num_samples"], "num_real": n, "num_reference": len(test)},
    }
    write_steps_csv(by_steps, steps_csv)
    if terms is not None:
        write_nll_terms(terms, nll_terms)
    else:
        nll_terms.write_text("t,term,bits_per_dim\n")
    write_json(metrics_path, metrics)
    log_to_mlflow(params, sampling, train_info, by_steps, floor, nll, accuracy, samples_dir, metrics_path, steps_csv, nll_terms)
    summary = f"  NLL {nll['bits_per_dim']:.3f} bits/dim on {nll['images']} test images" if nll else ""
    click.echo(f"FID {headline['fid']:.3f} at {headline['steps']} steps (real {floor['fid']:.3f}){summary}")


def log_to_mlflow(params, sampling, train_info, by_steps, floor, nll, accuracy, samples_dir, metrics_path, steps_csv, nll_terms) -> None:
    """One evaluation run per step count, nested under the training run; NLL on both."""
    training_params = train_info["params"]
    nll_metrics = {f"nll_{k}": v for k, v in nll.items() if isinstance(v, float)} if nll else {}
    for row in by_steps:
        run_name = f"{training_params['schedule']}-T{training_params['T']}-{sampling['sampler']}{row['steps']}"
        with tracking.start_run(params.tracking.experiment, run_name, "evaluate", parent_run_id=train_info["run_id"]):
            tracking.log_params(flatten(training_params))
            tracking.log_params(flatten({"sample": params.to_dict()["sample"], "evaluate": params.to_dict()["evaluate"]}))
            tracking.log_params(
                {
                    "sampler": sampling["sampler"],
                    "sample_steps": row["steps"],
                    "variance": sampling["variance"],
                    "eta": sampling["eta"],
                    "feature_extractor": EXTRACTOR,
                    "reference_split": "test",
                    "num_generated": sampling["num_samples"],
                    "train_run_id": train_info["run_id"],
                    "checkpoint_step": sampling["checkpoint_step"],
                    "sampling_device": sampling["device"],
                }
            )
            values = {k: v for k, v in row.items() if k != "steps" and v is not None}
            tracking.log_metrics({**values, **{f"real_{k}": v for k, v in floor.items()}, "classifier_accuracy": accuracy, **nll_metrics})
            folder = samples_dir / f"steps-{row['steps']}"
            for name in ("grid.png", "denoise_strip.png"):
                if (folder / name).is_file():
                    tracking.log_artifact(folder / name, "samples")
            tracking.log_artifact(metrics_path)
    if tracking.run_exists(train_info["run_id"]):
        tracking.log_artifact(steps_csv, "evaluation", run_id=train_info["run_id"])
        if nll:
            tracking.log_metrics(nll_metrics, run_id=train_info["run_id"])
            tracking.log_artifact(nll_terms, "evaluation", run_id=train_info["run_id"])


if __name__ == "__main__":
    main()
