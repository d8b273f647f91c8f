"""DVC stage `evaluate`: FID, IS and KID of the samples against the held-out test split.

Features come from the dataset classifier (stage `classifier`), registered with
torch-fidelity. The same metrics for real training images vs the test split, with the
same number of images, give the floor every generated number should be read against.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ddpmlab import tracking
from ddpmlab.cli import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.config import flatten
from ddpmlab.data import ImageSet
from ddpmlab.devices import resolve_device
from ddpmlab.metrics import EXTRACTOR, fidelity_metrics


def ratio(generated: float, real: float) -> float | None:
    return round(generated / real, 4) if real else None


@click.command(help=__doc__)
@params_option
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder.")
@click.option("--samples", "samples_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `sample`.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `train`.")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier checkpoint.")
@click.option("--classifier-metrics", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier accuracy JSON.")
@click.option("--out", "metrics_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="metrics.json to write.")
@stage_errors
def main(params_path: str, data_dir: Path, samples_dir: Path, model_dir: Path, classifier_path: Path, classifier_metrics: Path, metrics_path: Path) -> None:
    params = read_params(params_path)
    cfg = params.evaluate
    cuda = resolve_device(params.device).type == "cuda"
    with np.load(samples_dir / "samples.npz") as f:
        generated = f["images"]
    sampling = read_json(samples_dir / "sampling.json")
    train_info = read_json(model_dir / "train.json")
    accuracy = read_json(classifier_metrics)["test_accuracy"]
    train, test = ImageSet.load(data_dir / "train.npz"), ImageSet.load(data_dir / "test.npz")
    n = min(len(generated), len(train))
    real = train.images[np.random.default_rng(params.seed).choice(len(train), size=n, replace=False)]

    common = dict(classifier_path=classifier_path, kid_subset_size=cfg.kid_subset_size, batch_size=cfg.batch_size, cuda=cuda, seed=params.seed)
    click.echo(f"evaluating {len(generated)} generated and {n} real training images against {len(test)} test images ({EXTRACTOR})")
    gen = fidelity_metrics(generated, test.images, **common)
    floor = fidelity_metrics(real, test.images, **common)
    metrics = {
        **{k: round(v, 5) for k, v in gen.items()},
        "real": {k: round(v, 5) for k, v in floor.items()},
        "fid_ratio": ratio(gen["fid"], floor["fid"]),
        "is_ratio": ratio(gen["is_mean"], floor["is_mean"]),
        "seconds_per_sample": sampling["seconds_per_sample"],
        "classifier_accuracy": accuracy,
        "context": {
            "extractor": EXTRACTOR,
            "reference": "test",
            "num_generated": int(len(generated)),
            "num_real": int(n),
            "num_reference": int(len(test)),
        },
    }
    write_json(metrics_path, metrics)

    training_params = train_info["params"]
    run_name = f"{training_params['schedule']}-T{training_params['T']}-{sampling['sampler']}{sampling['steps']}"
    with tracking.start_run(params.tracking.experiment, run_name, "evaluate", parent_run_id=train_info["run_id"]):
        tracking.log_params(flatten(training_params))
        tracking.log_params(flatten({"sample": params.to_dict()["sample"], "evaluate": params.to_dict()["evaluate"]}))
        tracking.log_params(
            {
                "sampler": sampling["sampler"],
                "sample_steps": sampling["steps"],
                "variance": sampling["variance"],
                "eta": sampling["eta"],
                "feature_extractor": EXTRACTOR,
                "reference_split": "test",
                "num_generated": len(generated),
                "train_run_id": train_info["run_id"],
                "checkpoint_step": sampling["checkpoint_step"],
            }
        )
        tracking.log_metrics(
            {
                **gen,
                **{f"real_{k}": v for k, v in floor.items()},
                "fid_ratio": metrics["fid_ratio"] or float("nan"),
                "is_ratio": metrics["is_ratio"] or float("nan"),
                "seconds_per_sample": sampling["seconds_per_sample"],
                "classifier_accuracy": accuracy,
            }
        )
        for name in ("grid.png", "denoise_strip.png"):
            if (samples_dir / name).is_file():
                tracking.log_artifact(samples_dir / name, "samples")
        tracking.log_artifact(metrics_path)
    click.echo(
        f"FID {gen['fid']:.3f} (real {floor['fid']:.3f}, x{metrics['fid_ratio']})  "
        f"IS {gen['is_mean']:.3f} (real {floor['is_mean']:.3f}, x{metrics['is_ratio']})  [{EXTRACTOR}]"
    )


if __name__ == "__main__":
    main()
