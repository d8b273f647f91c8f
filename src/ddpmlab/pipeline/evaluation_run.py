"""The evaluate stage's work: every score of every run of the plan, the real-data floor, FID over
training and the NLL bound, written to the stage's files and logged to MLflow.

Reference features are cached by content hash; with evaluate.jackknife_groups > 0 every score gets a 95%
interval over images (grouped jackknife) and the runs are compared pair by pair (they share their x_T).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ddpmlab.config import Params
from ddpmlab.core.likelihood import summarize, vlb_terms
from ddpmlab.data.image_set import ImageSet, to_model_range
from ddpmlab.evaluation import memorisation, resampled_scores, scorecard
from ddpmlab.evaluation.classifier import check_accuracy, load_classifier, predict
from ddpmlab.evaluation.feature_cache import FeatureCache, default_cache_dir
from ddpmlab.evaluation.inception import resolve_weights
from ddpmlab.evaluation.metrics import Extractor
from ddpmlab.evaluation.protocol import MIN_PER_CLASS, SPLITS, Protocol, protocol_record
from ddpmlab.evaluation.real_data_test import fid_permutation_test
from ddpmlab.evaluation.resampling import Jackknife, Resampler
from ddpmlab.evaluation.snapshots import checkpoints_over_training, sample_checkpoint
from ddpmlab.evaluation.verdicts import sampling_verdicts
from ddpmlab.model.trained import TrainedDiffusion
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline.evaluation_tracking import log_evaluation
from ddpmlab.pipeline.stage_io import read_json, write_json
from ddpmlab.sampling.plan import Run, step_sweep


@dataclass(frozen=True)
class EvaluationInputs:
    data_dir: Path  # prepared data (train.npz, test.npz)
    samples_dir: Path  # the sample stage's folder
    model_dir: Path  # the train stage's folder (model.pt, train.json, snapshots/)
    classifier: Path  # classifier checkpoint
    classifier_metrics: Path  # its accuracy JSON
    cache_dir: Path | None = None  # reference-feature cache; None: the default


@dataclass(frozen=True)
class EvaluationOutputs:
    metrics: Path  # metrics.json: flat headline keys (the DVC metric)
    details: Path  # evaluation.json: everything
    steps_csv: Path
    guidance_csv: Path
    nfe_csv: Path
    nll_terms: Path
    training_curve: Path

    def tables(self) -> tuple[Path, ...]:
        return (self.steps_csv, self.guidance_csv, self.nfe_csv, self.nll_terms, self.training_curve)


@dataclass
class Scoring:
    """What scores every run: the extractor, the protocol against the reference splits, the memorisation check, the floor."""

    extractor: Extractor
    protocol: Protocol
    references: dict
    copies: memorisation.Memorisation
    resampler: Resampler | None
    floor: dict
    floor_replicates: dict


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


def feature_weights(params: Params, inputs: EvaluationInputs, accuracy: float) -> Path:
    """The extractor's weights: Inception's file, or the dataset classifier once its accuracy passes."""
    if params.evaluate.feature_extractor == "inception-v3-compat":
        return resolve_weights(params.evaluate.inception_weights)
    check_accuracy(accuracy, params.classifier.min_accuracy)  # a classifier that cannot tell classes apart gives meaningless features
    return inputs.classifier


def prepare_scoring(params: Params, weights: Path, data: dict[str, ImageSet], n: int, cache_dir: Path | None, device: torch.device) -> tuple[Scoring, dict, int]:
    """The reference features (cached), the protocol, the memorisation check and the real floor for ``n`` images:
    (scoring, the reference cache keys, the number of real images the floor used)."""
    cfg = params.evaluate
    extractor = Extractor(cfg.feature_extractor, weights, device, cfg.batch_size)
    cache = FeatureCache(cache_dir or default_cache_dir())
    references, keys = {}, {}
    for split in SPLITS:
        references[split], keys[split] = cache.features(data[split].images, extractor.identity, extractor)
    resampler = Jackknife(cfg.jackknife_groups, params.seed) if cfg.jackknife_groups else None
    protocol = Protocol(references, kid_subset_size=cfg.kid_subset_size, isc_splits=cfg.isc_splits, seed=params.seed,
                        reference_keys=keys, store=cache, device=device, resampler=resampler)  # fmt: skip
    copies = memorisation.build(
        references["train"].features, data["train"].images, references["test"].features, data["test"].images, cache, keys, device
    )
    floor, num_real, floor_replicates = protocol.real_floor(n)
    floor = scorecard.rounded({**floor, **copies.floor()})
    floor.update(scorecard.with_intervals(floor, floor_replicates, resampler))
    click.echo(f"{cfg.feature_extractor} features; references: test {len(data['test'])} / train {len(data['train'])} images "
               f"({cache.hits} cached, {cache.misses} extracted); {n} generated images per run")  # fmt: skip
    return Scoring(extractor, protocol, references, copies, resampler, floor, floor_replicates), keys, num_real


def score_runs(scoring: Scoring, runs: list[Run], sampling: dict, samples_dir: Path, train_labels: np.ndarray, classifier, device) -> tuple:
    """Every run's row of scores: (rows, per-class scores by run, the headline run's closest pairs, resampled scores by run,
    the exact test against the test split by run: only with intervals, like every verdict)."""
    rows, per_class, copied, replicates, against_real = [], {}, None, {}, {}
    protocol, copies, resampler = scoring.protocol, scoring.copies, scoring.resampler
    for run, entry in tqdm(list(zip(runs, sampling["runs"])), desc="evaluate", unit="run"):
        with np.load(samples_dir / run.folder / "samples.npz") as f:
            samples, labels = f["images"], f.get("labels")
        generated = scoring.extractor(samples)
        nearest = copies.nearest({"features": generated.features, "pixels": memorisation.pixel_vectors(samples)})
        scores, replicates[run.key] = protocol.score_resampled(generated) if resampler else (protocol.score(generated), {})
        counts = resampler.counts("generated", len(samples)) if resampler else None  # the same indices in every run: paired
        if counts is not None:
            replicates[run.key].update({name: resampled_scores.proportion(hit, counts) for name, hit in copies.copied(nearest).items()})
            against_real[run.key] = fid_permutation_test(generated.features, scoring.references["test"].features, seed=protocol.seed)
        row = scorecard.score_row(run, entry, {**scores, **copies.score(nearest)}, scoring.floor, replicates[run.key], scoring.floor_replicates, resampler)
        copied = copied or {"run": run.key, **copies.summary(nearest)}  # the headline run's closest pairs
        if classifier is not None and labels is not None:
            predicted = predict(classifier, samples, device)
            per_class[run.key] = scorecard.add_class_scores(row, predicted, labels, generated, scoring.references["train"], train_labels, counts, resampler)
        rows.append(row)
        accuracy_note = f"  accuracy {row['cond_accuracy']:.3f}" if "cond_accuracy" in row else ""
        tqdm.write(f"  {run.key:>22} ({run.nfe:>4} NFE): FID {row['fid']:.3f} (x{row['fid_ratio']}; vs train {row['fid_train']:.3f})  "
                   f"IS {row['is_mean']:.3f}  precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                   f"copy rate {row['copy_rate']:.3f}{accuracy_note}")  # fmt: skip
    return rows, per_class, copied, replicates, against_real


def run_evaluation(params: Params, inputs: EvaluationInputs, outputs: EvaluationOutputs) -> str:
    """Score every run of the sample stage's plan and write ``outputs``; returns the one-line summary the stage prints."""
    cfg = params.evaluate
    sampling, train_info = read_json(inputs.samples_dir / "sampling.json"), read_json(inputs.model_dir / "train.json")
    accuracy = read_json(inputs.classifier_metrics)["test_accuracy"]
    weights = feature_weights(params, inputs, accuracy)
    device = resolve_device(params.device)
    data = {split: ImageSet.load(inputs.data_dir / f"{split}.npz") for split in SPLITS}
    n = sampling["num_samples"]
    scoring, keys, num_real = prepare_scoring(params, weights, data, n, inputs.cache_dir, device)
    floor = scoring.floor

    classifier = load_classifier(inputs.classifier, device) if sampling.get("num_classes") else None
    runs = [Run.from_dict(entry) for entry in sampling["runs"]]
    rows, per_class, copied, replicates, against_real = score_runs(scoring, runs, sampling, inputs.samples_dir, data["train"].labels, classifier, device)
    curve = fid_over_training(params, inputs.model_dir, scoring.protocol, scoring.extractor, device)
    nll, terms = estimate_nll(params, inputs.model_dir, data["test"], device)

    record = protocol_record(params, scoring.extractor.identity["weights_sha256"], n, num_real, {s: len(data[s]) for s in SPLITS}, keys, sampling)
    extras = {"classifier_accuracy": accuracy, "min_images_per_class": MIN_PER_CLASS,
              "over_training_settings": {"images": cfg.snapshot_samples, "sample_steps": cfg.snapshot_steps},
              "memorisation": {"quantile": memorisation.COPY_QUANTILE, **copied}}  # fmt: skip
    if scoring.resampler:
        swept = {r.key for r in step_sweep(runs)}
        extras["comparisons"] = sampling_verdicts([row for row in rows if row["key"] in swept], replicates, floor, scoring.floor_replicates,
                                                  scoring.resampler, num_images=n, floor_images=num_real["test"], correction=cfg.correction,
                                                  against_real=against_real)  # fmt: skip
    evaluation = scorecard.details(rows, floor, nll, curve, {k: v for k, v in per_class.items() if v}, record, extras)
    scorecard.write_tables(rows, runs, curve, bool(sampling.get("num_classes")), outputs.steps_csv, outputs.guidance_csv, outputs.nfe_csv,
                           outputs.training_curve)  # fmt: skip
    scorecard.write_nll_terms(terms, outputs.nll_terms)
    write_json(outputs.details, evaluation)
    write_json(outputs.metrics, scorecard.headline_metrics(rows, nll, floor))
    log_evaluation(params, sampling, train_info, runs, rows, evaluation, inputs.samples_dir, (outputs.metrics, outputs.details),
                   outputs.tables(), curve)  # fmt: skip
    summary = f"  NLL {nll['bits_per_dim']:.3f} bits/dim on {nll['images']} test images" if nll else ""
    head = rows[0]
    return f"FID {head['fid']:.3f} vs test, {head['fid_train']:.3f} vs train for {head['key']} (real {floor['fid']:.3f}){summary}"
