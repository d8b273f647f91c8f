"""DVC stage `evaluate`: FID, KID, IS and precision / recall at every sampling step count,
against the test and the training split, and the NLL bound.

Two outputs: metrics.json, a few flat headline keys (the DVC metric, short enough for
`dvc exp show` and `dvc metrics diff` in a terminal), and evaluation.json with everything.
The protocol is explicit and recorded (evaluation.json "protocol", MLflow params): the feature
extractor (evaluate.feature_extractor), N generated images per step count (sample.num_samples;
the paper protocol is 50,000 and FID is biased upward at small N), the real-data floor with
the same N, the seed, and the checkpoint (EMA weights, eval mode, its training step).
Reference features are extracted once per (data content, extractor) and cached by content
hash (--cache-dir). The NLL is the variational bound in bits/dim (Ho et al. eq. 5) on
evaluate.nll_images test images. Each step count becomes one MLflow run nested under the
training run.

Conditional models: every (steps, guidance w) run is scored the same way, plus the
conditional accuracy (the dataset classifier's accuracy on the generated images against the
classes asked for) and per-class FID against the training split's images of each class
(where every class has evaluation.MIN_PER_CLASS images on both sides). guidance.csv holds
the w sweep (FID vs accuracy, the trade-off of Ho & Salimans 2022).
"""

from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ddpmlab import tracking
from ddpmlab.classifier import check_accuracy, load_classifier, predict
from ddpmlab.cli import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.config import Params, flatten
from ddpmlab.data import ImageSet, to_model_range
from ddpmlab.devices import resolve_device
from ddpmlab.evaluation import MIN_PER_CLASS, SPLITS, Protocol, per_class_fid
from ddpmlab.feature_cache import CACHE_ENV, FeatureCache, default_cache_dir
from ddpmlab.inception import resolve_weights
from ddpmlab.likelihood import summarize, vlb_terms
from ddpmlab.metrics import KID_SUBSETS, PRC_NEIGHBORHOOD, Extractor
from ddpmlab.snapshots import checkpoints_over_training, sample_checkpoint
from ddpmlab.trained import TrainedDiffusion

STEP_FIELDS = (
    "steps", "fid", "fid_train", "fid_ratio", "is_mean", "is_ratio", "kid_mean", "kid_mean_train", "precision", "recall",
    "precision_train", "recall_train", "seconds_per_sample", "images_per_s", "network_evals_per_sample",
    "guidance", "cond_accuracy", "per_class_fid",
)  # fmt: skip
GUIDANCE_FIELDS = ("guidance", "steps", "fid", "fid_train", "is_mean", "cond_accuracy", "per_class_fid", "precision", "recall")
CURVE_FIELDS = ("step", "fid", "fid_train", "is_mean", "precision", "recall")
HEADLINE = ("fid", "fid_train", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "fid_ratio", "is_ratio", "seconds_per_sample")


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


def write_rows_csv(rows: list[dict], fields: tuple[str, ...], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def fid_over_training(params: Params, model_dir: Path, protocol: Protocol, extractor: Extractor, device: torch.device) -> list[dict]:
    """One row per checkpoint (EMA snapshots, then the final model): its training step and scores."""
    if params.evaluate.snapshot_samples == 0:
        return []
    rows = []
    for path in tqdm(checkpoints_over_training(model_dir), desc="snapshots", unit="checkpoint"):
        step, images = sample_checkpoint(path, params, device)
        rows.append({"step": step, **rounded(protocol.score(extractor(images)))})
    return rows


def extractor_weights(params: Params, classifier_path: Path, classifier_accuracy: float) -> Path:
    """The extractor's weights file, after the checks that make its features trustworthy."""
    if params.evaluate.feature_extractor == "inception-v3-compat":
        return resolve_weights(params.evaluate.inception_weights)
    check_accuracy(classifier_accuracy, params.classifier.min_accuracy)
    return classifier_path


@click.command(help=__doc__)
@params_option
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder.")
@click.option("--samples", "samples_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `sample`.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `train`.")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier checkpoint.")
@click.option("--classifier-metrics", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier accuracy JSON.")
@click.option("--out", "metrics_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="metrics.json to write: flat headline keys.")
@click.option("--details", "details_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="evaluation.json to write: every number and the protocol.")
@click.option("--steps-csv", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of the metrics per step count.")
@click.option("--guidance-csv", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of the metrics per guidance weight (conditional models; else header only).")
@click.option("--nll-terms", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of the NLL bound's terms per t.")
@click.option("--training-curve", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of FID per training checkpoint.")
@click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"Reference-feature cache [default: ${CACHE_ENV}, else ~/.cache/ddpmlab]/features; entries are keyed by content hash.",
)  # fmt: skip
@stage_errors
def main(
    params_path, data_dir, samples_dir, model_dir, classifier_path, classifier_metrics, metrics_path, details_path, steps_csv, guidance_csv, nll_terms, training_curve, cache_dir
) -> None:
    params = read_params(params_path)
    tracking.require_reachable()  # before minutes of feature extraction, not after them
    cfg = params.evaluate
    sampling = read_json(samples_dir / "sampling.json")
    train_info = read_json(model_dir / "train.json")
    accuracy = read_json(classifier_metrics)["test_accuracy"]
    weights = extractor_weights(params, classifier_path, accuracy)
    device = resolve_device(params.device)
    data = {split: ImageSet.load(data_dir / f"{split}.npz") for split in SPLITS}

    extractor = Extractor(cfg.feature_extractor, weights, device, cfg.batch_size)
    cache = FeatureCache(cache_dir or default_cache_dir())
    references, keys = {}, {}
    for split in SPLITS:
        references[split], keys[split] = cache.features(data[split].images, extractor.identity, extractor)
    protocol = Protocol(references, kid_subset_size=cfg.kid_subset_size, isc_splits=cfg.isc_splits, seed=params.seed)
    n = sampling["num_samples"]
    floor, num_real = protocol.real_floor(n)
    floor = rounded(floor)
    click.echo(
        f"{cfg.feature_extractor} features; references: test {len(data['test'])} / train {len(data['train'])} images "
        f"({cache.hits} cached, {cache.misses} extracted); {n} generated images per step count"
    )

    classifier = load_classifier(classifier_path, device) if sampling.get("num_classes") else None
    by_steps, per_class = [], {}
    for entry in tqdm(sampling["runs"], desc="evaluate", unit="run"):
        with np.load(samples_dir / entry["folder"] / "samples.npz") as f:
            samples, labels = f["images"], f.get("labels")
        generated = extractor(samples)
        gen = rounded(protocol.score(generated))
        key = entry.get("key", str(entry["steps"]))
        row = {
            "key": key, "steps": entry["steps"], **gen, "fid_ratio": ratio(gen["fid"], floor["fid"]), "is_ratio": ratio(gen["is_mean"], floor["is_mean"]),
            "seconds_per_sample": entry["seconds_per_sample"], "images_per_s": round(1 / entry["seconds_per_sample"], 2),
            "network_evals_per_sample": entry["network_evals_per_sample"], "guidance": entry.get("guidance"),
        }  # fmt: skip
        note = ""
        if classifier is not None and labels is not None:
            row["cond_accuracy"] = round(float((predict(classifier, samples, device) == labels).mean()), 4)
            per_class[key] = per_class_fid(generated, labels, references["train"], data["train"].labels)
            if per_class[key] is not None:
                per_class[key] = rounded(per_class[key])
                row["per_class_fid"] = round(float(np.mean(list(per_class[key].values()))), 5)
            note = f"  w={entry['guidance']:g}: accuracy {row['cond_accuracy']:.3f}"
        by_steps.append(row)
        tqdm.write(
            f"  {entry['steps']:>5} steps{note}: FID {gen['fid']:.3f} (x{row['fid_ratio']}; vs train {gen['fid_train']:.3f})  IS {gen['is_mean']:.3f}  "
            f"KID {gen['kid_mean']:.4f}  precision {gen['precision']:.3f}  recall {gen['recall']:.3f}  {row['images_per_s']:.1f} img/s"
        )
    curve = fid_over_training(params, model_dir, protocol, extractor, device)
    nll, terms = estimate_nll(params, model_dir, data["test"], device)

    headline = by_steps[0]
    metrics = {
        **{k: headline[k] for k in HEADLINE},
        "sample_steps": headline["steps"],
        "guidance": headline["guidance"],
        "cond_accuracy": headline.get("cond_accuracy"),
        "nll_bits_per_dim": nll["bits_per_dim"] if nll else None,
        "real": floor,
        "classifier_accuracy": accuracy,
        "by_steps": {row["key"]: {k: v for k, v in row.items() if k != "key"} for row in by_steps},
        "per_class_fid": ({"reference": "train", "min_images_per_class": MIN_PER_CLASS, "by_run": per_class} if per_class else None),
        "nll": nll,
        "over_training": {
            "images": cfg.snapshot_samples, "sample_steps": cfg.snapshot_steps,
            "by_step": {str(row["step"]): {k: row[k] for k in CURVE_FIELDS[1:]} for row in curve},
        } if curve else None,
        "protocol": {
            "feature_extractor": cfg.feature_extractor,
            "extractor_weights_sha256": extractor.identity["weights_sha256"],
            "num_generated": n,
            "num_real": num_real,
            "reference_images": {split: len(data[split]) for split in SPLITS},
            "reference_keys": {split: keys[split][:16] for split in SPLITS},
            "reference_augmented": False,
            "seed": params.seed,
            "sample_seed": params.sample.seed,
            "kid_subset_size": min(cfg.kid_subset_size, n, *num_real.values()),
            "kid_subsets": KID_SUBSETS,
            "isc_splits": cfg.isc_splits,
            "prc_neighborhood": PRC_NEIGHBORHOOD,
            "checkpoint_step": sampling["checkpoint_step"],
            "weights": sampling["weights"],
            "model_mode": sampling["model_mode"],
        },
    }
    first_w = headline["guidance"]
    write_rows_csv([row for row in by_steps if row["guidance"] == first_w], STEP_FIELDS, steps_csv)  # the step-count sweep
    write_rows_csv([row for row in by_steps if first_w is not None and row["steps"] == headline["steps"]], GUIDANCE_FIELDS, guidance_csv)
    write_rows_csv(curve, CURVE_FIELDS, training_curve)
    if terms is not None:
        write_nll_terms(terms, nll_terms)
    else:
        nll_terms.write_text("t,term,bits_per_dim\n")
    write_json(details_path, metrics)
    write_json(metrics_path, headline_metrics(metrics))
    log_to_mlflow(params, sampling, train_info, by_steps, curve, metrics, samples_dir, (metrics_path, details_path), (steps_csv, guidance_csv, nll_terms, training_curve))
    summary = f"  NLL {nll['bits_per_dim']:.3f} bits/dim on {nll['images']} test images" if nll else ""
    click.echo(f"FID {headline['fid']:.3f} vs test, {headline['fid_train']:.3f} vs train at {headline['steps']} steps (real {floor['fid']:.3f}){summary}")


def headline_metrics(evaluation: dict) -> dict:
    """The DVC metric: flat keys, the headline step count's scores, the NLL, the real-data FID floor
    and FID at every step count as ``fid@<steps>``."""
    out = {key: evaluation[key] for key in ("fid", "fid_train", "is_mean", "kid_mean", "precision", "recall", "sample_steps", "seconds_per_sample")}
    out["nll_bpd"] = evaluation["nll_bits_per_dim"]
    out["real_fid"] = evaluation["real"]["fid"]
    out.update({f"fid@{key}": row["fid"] for key, row in evaluation["by_steps"].items()})
    if evaluation.get("cond_accuracy") is not None:  # conditional models: the class fidelity of every run too
        out["cond_accuracy"] = evaluation["cond_accuracy"]
        out.update({f"acc@{key}": row["cond_accuracy"] for key, row in evaluation["by_steps"].items()})
    return out


def protocol_params(protocol: dict) -> dict:
    """The protocol as flat MLflow params (a run is only comparable with runs of the same protocol)."""
    return {**flatten(protocol), "reference_splits": ",".join(SPLITS)}


def log_to_mlflow(params, sampling, train_info, by_steps, curve, metrics, samples_dir, metric_files, tables) -> None:
    """One evaluation run per step count, nested under the training run; NLL on both; the
    FID-over-training curve on the training run (MLflow's step axis = training step)."""
    training_params = train_info["params"]
    nll = metrics["nll"]
    nll_metrics = {f"nll_{k}": v for k, v in nll.items() if isinstance(v, float)} if nll else {}
    for row in by_steps:
        w = row["guidance"]
        run_name = f"{training_params['schedule']}-T{training_params['T']}-{sampling['sampler']}{row['steps']}" + ("" if w is None else f"-w{w:g}")
        with tracking.start_run(params.tracking.experiment, run_name, "evaluate", parent_run_id=train_info["run_id"]):
            tracking.log_params(flatten(training_params))
            tracking.log_params(flatten({"sample": params.to_dict()["sample"], "evaluate": params.to_dict()["evaluate"]}))
            tracking.log_params(protocol_params(metrics["protocol"]))
            tracking.log_params(
                {
                    "sampler": sampling["sampler"],
                    "sample_steps": row["steps"],
                    **({} if w is None else {"guidance": w}),
                    "variance": sampling["variance"],
                    "eta": sampling["eta"],
                    "train_run_id": train_info["run_id"],
                    "sampling_device": sampling["device"],
                }
            )
            values = {k: v for k, v in row.items() if k not in ("steps", "key", "guidance") and v is not None}
            real = {f"real_{k}": v for k, v in metrics["real"].items()}
            accuracy = {"classifier_accuracy": metrics["classifier_accuracy"]} if metrics["classifier_accuracy"] is not None else {}
            tracking.log_metrics({**values, **real, **accuracy, **nll_metrics})
            folder = samples_dir / next(r["folder"] for r in sampling["runs"] if r.get("key", str(r["steps"])) == row["key"])
            for name in ("grid.png", "denoise_strip.png", "class_grid.png"):
                if (folder / name).is_file():
                    tracking.log_artifact(folder / name, "samples")
            for path in metric_files:
                tracking.log_artifact(path)
    train_run = train_info["run_id"]
    if tracking.run_exists(train_run):
        # The headline scores on the training run too: the UI's chart view lists parent runs, so
        # an `fid` chart there compares models (the latest evaluation of each).
        tracking.log_metrics({k: metrics[k] for k in ("fid", "fid_train", "is_mean", "kid_mean", "precision", "recall")}, run_id=train_run)
        for table in tables:
            tracking.log_artifact(table, "evaluation", run_id=train_run)
        if nll:
            tracking.log_metrics(nll_metrics, run_id=train_run)
        for row in curve:
            tracking.log_metrics({f"snapshot_{k}": row[k] for k in CURVE_FIELDS[1:]}, step=row["step"], run_id=train_run)


if __name__ == "__main__":
    main()
