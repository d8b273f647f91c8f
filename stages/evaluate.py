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

Every score gets a 95% interval from evaluate.jackknife_groups leave-one-group-out replicates of
the images (no network calls), and the runs are compared pair by pair, since they share their x_T: per NFE budget
the lowest FID and the runs tied with it, and each run against the real-data floor
(evaluation.json "comparisons"; docs/comparing.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from ddpmlab.evaluation.feature_cache import CACHE_ENV
from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.evaluation_run import EvaluationInputs, EvaluationOutputs, run_evaluation
from ddpmlab.pipeline.stage_io import params_option, read_params, stage_errors

PATH = click.Path(dir_okay=False, path_type=Path)
FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


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
    inputs = EvaluationInputs(data_dir, samples_dir, model_dir, classifier_path, classifier_metrics, cache_dir)
    outputs = EvaluationOutputs(metrics_path, details_path, steps_csv, guidance_csv, nfe_csv, nll_terms, training_curve)
    click.echo(run_evaluation(params, inputs, outputs))
    tracking.finish()  # outputs first: a server that fails here leaves them complete


if __name__ == "__main__":
    main()
