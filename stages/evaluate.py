"""DVC stage `evaluate`: FID, KID, IS and precision / recall of every run of the sampling plan
(sampler x spacing x steps, and guidance weights), against the test and the training split, and
the NLL bound.

Outputs: metrics.json, a few flat headline keys (the DVC metric, short enough for `dvc exp show`);
evaluation.json with everything; steps.csv (one row per run), guidance.csv (the w sweep of
conditional models), fid_vs_nfe.csv (FID per sampler against network evaluations), nll_terms.csv
and fid_over_training.csv. The protocol is explicit and recorded (evaluation.json "protocol",
MLflow params): the feature extractor, N generated images per run (the paper protocol is 50,000;
FID is biased upward at small N), the real-data floor with the same N, the seed and the checkpoint.
Reference features are cached by content hash (--cache-dir). The NLL is the variational bound in
bits/dim (Ho et al. eq. 5) on evaluate.nll_images test images. Each run becomes one MLflow run
nested under the training run.

Every score gets a 95% bootstrap interval from evaluate.bootstrap resamples of the images (no
network calls), and the runs are compared pair by pair, since they share their x_T: per NFE budget
the lowest FID and the runs tied with it, and each run against the real-data floor
(evaluation.json "comparisons"; docs/comparing.md).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ddpmlab.config import Params
from ddpmlab.core.likelihood import summarize, vlb_terms
from ddpmlab.data.image_set import ImageSet, to_model_range
from ddpmlab.evaluation import memorisation, resampled_scores, scorecard
from ddpmlab.evaluation.bootstrap import Resampler
from ddpmlab.evaluation.classifier import check_accuracy, load_classifier, predict
from ddpmlab.evaluation.feature_cache import CACHE_ENV, FeatureCache, default_cache_dir
from ddpmlab.evaluation.inception import resolve_weights
from ddpmlab.evaluation.metrics import Extractor
from ddpmlab.evaluation.protocol import MIN_PER_CLASS, SPLITS, Protocol, protocol_record
from ddpmlab.evaluation.snapshots import checkpoints_over_training, sample_checkpoint
from ddpmlab.evaluation.verdicts import sampling_verdicts
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.evaluation_runs import log_evaluation
from ddpmlab.pipeline.stage_io import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.sampling.plan import Run, step_sweep
from ddpmlab.training.trained import TrainedDiffusion

PATH = click.Path(dir_okay=False, path_type=Path)
FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


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


def fid_over_training(params: Params, model_dir: Path, protocol: Protocol, extractor: Extractor, device: torch.device) -> list[dict]:
    """One row per checkpoint (EMA snapshots, then the final model): its training step and scores."""
    if params.evaluate.snapshot_samples == 0:
        return []
    rows = []
    for path in tqdm(checkpoints_over_training(model_dir), desc="snapshots", unit="checkpoint"):
        step, images = sample_checkpoint(path, params, device)
        rows.append({"step": step, **scorecard.rounded(protocol.score(extractor(images)))})
    return rows


@click.command(help=__doc__)
@params_option
@click.option("--data", "data_dir", required=True, type=FOLDER, help="Prepared data folder.")
@click.option("--samples", "samples_dir", required=True, type=FOLDER, help="Output folder of `sample`.")
@click.option("--model", "model_dir", required=True, type=FOLDER, help="Output folder of `train`.")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier checkpoint.")
@click.option("--classifier-metrics", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier accuracy JSON.")
@click.option("--out", "metrics_path", required=True, type=PATH, help="metrics.json to write: flat headline keys.")
@click.option("--details", "details_path", required=True, type=PATH, help="evaluation.json to write: every number and the protocol.")
@click.option("--steps-csv", required=True, type=PATH, help="CSV of every metric per run (sampler, spacing, steps).")
@click.option("--guidance-csv", required=True, type=PATH, help="CSV of the metrics per guidance weight (conditional models; else header only).")
@click.option("--nfe-csv", required=True, type=PATH, help="CSV of FID per sampler against network evaluations per image.")
@click.option("--nll-terms", required=True, type=PATH, help="CSV of the NLL bound's terms per t.")
@click.option("--training-curve", required=True, type=PATH, help="CSV of FID per training checkpoint.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Reference-feature cache [default: ${CACHE_ENV}, else ~/.cache/ddpmlab]/features; keyed by content hash.")  # fmt: skip
@stage_errors
def main(params_path, data_dir, samples_dir, model_dir, classifier_path, classifier_metrics, metrics_path, details_path,
         steps_csv, guidance_csv, nfe_csv, nll_terms, training_curve, cache_dir) -> None:  # fmt: skip
    params = read_params(params_path)
    tracking.check_access(params.tracking.experiment)  # wrong credentials fail before minutes of feature extraction
    cfg = params.evaluate
    sampling, train_info = read_json(samples_dir / "sampling.json"), read_json(model_dir / "train.json")
    accuracy = read_json(classifier_metrics)["test_accuracy"]
    if cfg.feature_extractor == "inception-v3-compat":
        weights = resolve_weights(cfg.inception_weights)
    else:
        check_accuracy(accuracy, params.classifier.min_accuracy)  # a classifier that cannot tell classes apart gives meaningless features
        weights = classifier_path
    device = resolve_device(params.device)
    data = {split: ImageSet.load(data_dir / f"{split}.npz") for split in SPLITS}

    extractor = Extractor(cfg.feature_extractor, weights, device, cfg.batch_size)
    cache = FeatureCache(cache_dir or default_cache_dir())
    references, keys = {}, {}
    for split in SPLITS:
        references[split], keys[split] = cache.features(data[split].images, extractor.identity, extractor)
    resampler = Resampler(cfg.bootstrap, params.seed) if cfg.bootstrap else None
    protocol = Protocol(references, kid_subset_size=cfg.kid_subset_size, isc_splits=cfg.isc_splits, seed=params.seed,
                        reference_keys=keys, store=cache, device=device, resampler=resampler)  # fmt: skip
    copies = memorisation.build(
        references["train"].features, data["train"].images, references["test"].features, data["test"].images, cache, keys, device
    )
    n = sampling["num_samples"]
    floor, num_real, floor_replicates = protocol.real_floor(n)
    floor = scorecard.rounded({**floor, **copies.floor()})
    floor.update(scorecard.with_intervals(floor, floor_replicates))
    click.echo(f"{cfg.feature_extractor} features; references: test {len(data['test'])} / train {len(data['train'])} images "
               f"({cache.hits} cached, {cache.misses} extracted); {n} generated images per run")  # fmt: skip

    classifier = load_classifier(classifier_path, device) if sampling.get("num_classes") else None
    runs = [Run.from_dict(entry) for entry in sampling["runs"]]
    rows, per_class, copied, replicates = [], {}, None, {}
    for run, entry in tqdm(list(zip(runs, sampling["runs"])), desc="evaluate", unit="run"):
        with np.load(samples_dir / run.folder / "samples.npz") as f:
            samples, labels = f["images"], f.get("labels")
        generated = extractor(samples)
        nearest = copies.nearest({"features": generated.features, "pixels": memorisation.pixel_vectors(samples)})
        scores, replicates[run.key] = protocol.score_resampled(generated) if resampler else (protocol.score(generated), {})
        counts = resampler.counts("generated", len(samples)) if resampler else None  # the same indices in every run: paired
        if counts is not None:
            replicates[run.key].update({name: resampled_scores.proportion(hit, counts) for name, hit in copies.copied(nearest).items()})
        row = scorecard.score_row(run, entry, {**scores, **copies.score(nearest)}, floor, replicates[run.key], floor_replicates)
        copied = copied or {"run": run.key, **copies.summary(nearest)}  # the headline run's closest pairs
        if classifier is not None and labels is not None:
            predicted = predict(classifier, samples, device)
            per_class[run.key] = scorecard.add_class_scores(row, predicted, labels, generated, references["train"], data["train"].labels, counts)
        rows.append(row)
        accuracy_note = f"  accuracy {row['cond_accuracy']:.3f}" if "cond_accuracy" in row else ""
        tqdm.write(f"  {run.key:>22} ({run.nfe:>4} NFE): FID {row['fid']:.3f} (x{row['fid_ratio']}; vs train {row['fid_train']:.3f})  "
                   f"IS {row['is_mean']:.3f}  precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                   f"copy rate {row['copy_rate']:.3f}{accuracy_note}")  # fmt: skip
    curve = fid_over_training(params, model_dir, protocol, extractor, device)
    nll, terms = estimate_nll(params, model_dir, data["test"], device)

    record = protocol_record(params, extractor.identity["weights_sha256"], n, num_real, {s: len(data[s]) for s in SPLITS}, keys, sampling)
    extras = {"classifier_accuracy": accuracy, "min_images_per_class": MIN_PER_CLASS,
              "over_training_settings": {"images": cfg.snapshot_samples, "sample_steps": cfg.snapshot_steps},
              "memorisation": {"quantile": memorisation.COPY_QUANTILE, **copied}}  # fmt: skip
    if resampler:
        swept = {r.key for r in step_sweep(runs)}
        extras["comparisons"] = sampling_verdicts([row for row in rows if row["key"] in swept], replicates, floor, floor_replicates)
    evaluation = scorecard.details(rows, floor, nll, curve, {k: v for k, v in per_class.items() if v}, record, extras)
    scorecard.write_tables(rows, runs, curve, bool(sampling.get("num_classes")), steps_csv, guidance_csv, nfe_csv, training_curve)
    scorecard.write_nll_terms(terms, nll_terms)
    write_json(details_path, evaluation)
    write_json(metrics_path, scorecard.headline_metrics(rows, nll, floor))
    log_evaluation(params, sampling, train_info, runs, rows, evaluation, samples_dir, (metrics_path, details_path),
                   (steps_csv, guidance_csv, nfe_csv, nll_terms, training_curve), curve)  # fmt: skip
    summary = f"  NLL {nll['bits_per_dim']:.3f} bits/dim on {nll['images']} test images" if nll else ""
    head = rows[0]
    click.echo(f"FID {head['fid']:.3f} vs test, {head['fid_train']:.3f} vs train for {head['key']} (real {floor['fid']:.3f}){summary}")
    tracking.finish()  # outputs first: a server that fails here leaves them complete


if __name__ == "__main__":
    main()
