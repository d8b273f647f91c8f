"""DVC stage `report`: reports/report.md and a self-contained report.html, built from the
other stages' outputs only (params come from the checkpoint's train.json, not params.yaml).
The report and its figures are also logged to the MLflow training run (artifacts under report/)."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.stage_io import read_json, stage_errors
from ddpmlab.reporting.run_report import ReportInputs, build_report

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(help=__doc__)
@click.option("--data", "data_dir", required=True, type=FOLDER, help="Prepared data folder (card, test images, real grid).")
@click.option("--model", "model_dir", required=True, type=FOLDER, help="Output folder of `train` (train.json).")
@click.option("--samples", "samples_dir", required=True, type=FOLDER, help="Output folder of `sample`.")
@click.option("--evaluation", "evaluation_path", required=True, type=FILE, help="evaluation.json of `evaluate`.")
@click.option("--classifier-metrics", required=True, type=FILE, help="Classifier accuracy JSON.")
@click.option("--train-log", required=True, type=FILE, help="Training log CSV.")
@click.option("--schedule", "schedule_path", required=True, type=FILE, help="Schedule CSV (beta_t, alpha-bar_t).")
@click.option("--steps-csv", required=True, type=FILE, help="Metrics per run (sampler, spacing, steps).")
@click.option("--guidance-csv", required=True, type=FILE, help="Metrics per guidance weight (conditional models).")
@click.option("--nll-terms", required=True, type=FILE, help="NLL bound terms per t.")
@click.option("--training-curve", required=True, type=FILE, help="FID per training checkpoint.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for report.md, report.html, figures/.")
@stage_errors
def main(data_dir, model_dir, samples_dir, evaluation_path, classifier_metrics, train_log, schedule_path, steps_csv, guidance_csv, nll_terms, training_curve, out) -> None:
    tracking.check_access(None)  # wrong credentials fail at once
    tables = {"log": train_log, "schedule": schedule_path, "steps": steps_csv, "guidance": guidance_csv, "nll_terms": nll_terms, "curve": training_curve}
    inputs = ReportInputs(
        data_dir=data_dir,
        samples_dir=samples_dir,
        card=read_json(data_dir / "card.json"),
        train=read_json(model_dir / "train.json"),
        sampling=read_json(samples_dir / "sampling.json"),
        metrics=read_json(evaluation_path),
        classifier=read_json(classifier_metrics),
        tables={k: pd.read_csv(v) for k, v in tables.items()},
    )
    doc = build_report(inputs, out)
    (out / "report.md").write_text(doc.to_markdown())
    (out / "report.html").write_text(doc.to_html(out))
    click.echo(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    train_run = inputs.train["run_id"]
    if tracking.run_exists(train_run):
        for name in ("report.html", "report.md"):
            tracking.log_artifact(out / name, "report", run_id=train_run)
        tracking.log_artifacts(out / "figures", "report/figures", run_id=train_run)
    tracking.finish()


if __name__ == "__main__":
    main()
