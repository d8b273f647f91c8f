"""DVC stage `report`: reports/report.md and a self-contained report.html, built from the
other stages' outputs only (params come from the checkpoint's train.json, not params.yaml).
The report and its figures are also logged to the MLflow training run (artifacts under report/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

from ddpmlab.config import flatten
from ddpmlab.data import images
from ddpmlab.data.image_set import ImageSet
from ddpmlab.evaluation import metric_registry
from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.stage_io import read_json, stage_errors
from ddpmlab.reporting.document import Document, Estimate
from ddpmlab.reporting.figures import forward_strip, loss_figure, nll_figure, schedule_figure, training_curve_figure
from ddpmlab.reporting.memorisation import memorisation_section
from ddpmlab.reporting.sections import (
    data_section,
    floor_sentence,
    guidance_section,
    loss_setting,
    plan_text,
    protocol_text,
    sampling_section,
)
from ddpmlab.sampling.plan import Run, step_sweep

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def metrics_table(doc: Document, metrics: dict, run: Run) -> None:
    """Every registry metric of the headline run next to the real floor, against both splits, with 95% intervals."""
    generated, real = metrics["by_run"][run.key], metrics["real"]

    def cell(values: dict, name: str) -> Estimate | None:
        return Estimate.of(values, name) if values.get(name) is not None else None

    rows = []
    for m in metric_registry.METRICS:
        if m.name not in metric_registry.FLOOR_METRICS:
            continue
        cells = [[cell(generated, m.name + s), cell(real, m.name + s)] if (m.per_split or not s) else ["", ""] for s in metric_registry.SPLIT_SUFFIXES]
        rows.append([m.label + {"min": " (lower is better)", "max": " (higher is better)", None: ""}[m.better], *cells[0], *cells[1]])
    rows.append(["FID / real floor's FID", cell(generated, "fid_ratio"), 1.0, "", ""])
    rows.append(["IS / real floor's IS", cell(generated, "is_ratio"), 1.0, "", ""])
    doc.table(["metric", f"generated ({run.key}) vs test", "real floor vs test", "generated vs train", "real floor vs train"], rows)


def headline_text(metrics: dict, run: Run) -> str:
    """The conclusion in one paragraph: the headline FID and the floor with their intervals, and what they say."""
    generated, real = metrics["by_run"][run.key], metrics["real"]
    n = metrics["protocol"]["num_generated"]
    text = f"Headline: {run.key} scores FID {Estimate.of(generated, 'fid')} against the test split; real images scored the same way give {Estimate.of(real, 'fid')}."
    comparisons = metrics.get("comparisons")
    if not comparisons:
        return text + " No intervals were computed (evaluate.bootstrap = 0), so no difference here can be called real."
    text += " " + floor_sentence(run.key, comparisons, n)
    widest = comparisons["by_budget"][-1]
    others = len(widest["tied"]) - 1
    text += (f" Over the whole sweep the lowest FID is {widest['best']}'s; "
             + (f"{others} other run{'s' if others > 1 else ''} cannot be told apart from it." if others else "every other run is detectably worse.")
             + f" Intervals are {comparisons['level']:.0%} bootstrap intervals over {metrics['protocol']['bootstrap']['resamples']} resamples"
             " of the images; they cover sampling noise, not the training seed.")  # fmt: skip
    return text


def build(data_dir: Path, model_dir: Path, samples_dir: Path, metrics: dict, classifier: dict, tables: dict[str, pd.DataFrame], out: Path) -> Document:
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    train, sampling, card = read_json(model_dir / "train.json"), read_json(samples_dir / "sampling.json"), read_json(data_dir / "card.json")
    params = train["params"]
    runs = [Run.from_dict(entry) for entry in sampling["runs"]]
    head = runs[0]
    head_entry = sampling["runs"][0]

    loss_figure(tables["log"], figures / "loss.png")
    schedule_figure(tables["schedule"], params["schedule"], figures / "schedule.png")
    test = ImageSet.load(data_dir / "test.npz")
    strip, ts = forward_strip(test.images[:4], torch.tensor(tables["schedule"]["beta"].to_numpy()), columns=9, seed=0)
    images.save_png(images.upscale(images.grid(strip, columns=len(ts)), images.display_scale(card["image_size"])), figures / "forward_strip.png")
    copies = {"real_grid.png": data_dir / "real_grid.png", "samples_grid.png": samples_dir / head.folder / "grid.png", "comparison.png": samples_dir / "comparison.png"}
    has_denoise = (samples_dir / head.folder / "denoise_strip.png").is_file()
    if has_denoise:
        copies["denoise_strip.png"] = samples_dir / head.folder / "denoise_strip.png"
    for name, src in copies.items():
        shutil.copyfile(src, figures / name)

    doc = Document(f"ddpmlab report: {params['schedule']} schedule, T = {params['T']}")
    doc.paragraph(
        f"DDPM ({params['objective']}-prediction, {loss_setting(params['train'])}) trained for {train['step']} steps on `{card['source']}` "
        f"({card['train']['count']} train / {card['test']['count']} test images, {card['channels']}x{card['image_size']}x{card['image_size']}), "
        f"U-Net with {train['num_parameters']:,} parameters on {train['device']}. Sampled {sampling['num_samples']} images per run with "
        f"{plan_text(runs)} on {sampling['device']}; the headline numbers are those of the first run, {head.label()} "
        f"({head.nfe} network evaluations, {head_entry['seconds_per_sample'] * 1000:.1f} ms per image)."
    )
    doc.paragraph(headline_text(metrics, head))
    doc.heading("Metrics")
    doc.paragraph(protocol_text(metrics["protocol"], classifier))
    metrics_table(doc, metrics, head)
    sampling_section(doc, tables["steps"], step_sweep(runs), sampling, metrics["real"], figures, metrics.get("comparisons"))
    if len(tables["guidance"]):
        class_names = card.get("classes") or [str(c) for c in range(sampling["num_classes"])]
        guidance_section(doc, tables["guidance"], metrics, sampling, runs, samples_dir, class_names, figures)
    with np.load(samples_dir / head.folder / "samples.npz") as f:
        generated = f["images"]
    train_images = ImageSet.load(data_dir / "train.npz").images
    memorisation_section(doc, tables["steps"], metrics["memorisation"], metrics["real"], generated, train_images, figures)

    nll = metrics.get("nll")
    doc.heading("Likelihood")
    if nll:
        nll_figure(tables["nll_terms"], figures / "nll.png")
        doc.paragraph(
            f"Upper bound on the negative log-likelihood (Ho et al. 2020, eq. 5: L_T + sum of KL terms + the discretized "
            f"Gaussian decoder L_0 of eq. 13) on {nll['images']} test images, one x_t draw per image and t, reverse variance "
            f"`{nll['variance']}`. In bits per dimension of the {card['channels']}x{card['image_size']}x{card['image_size']} 8-bit images; "
            "the paper's CIFAR-10 model reaches <= 3.75 bits/dim on 32x32x3 images, which is not comparable with this data."
        )
        doc.table(
            ["term", "bits/dim"],
            [["total bound", nll["bits_per_dim"]], ["standard error over images", nll["standard_error"]],
             ["L_0 (decoder)", nll["decoder_L0"]], ["sum of KL terms L_1..L_{T-1}", nll["kl_sum"]], ["L_T (prior)", nll["prior_LT"]]],
        )  # fmt: skip
        doc.image("figures/nll.png", "Each term of the bound against t (log y) and the cumulative share of the total")
    else:
        doc.paragraph("Not computed (evaluate.nll_images is 0).")

    doc.heading("Samples")
    doc.image("figures/real_grid.png", "Real training images")
    doc.image("figures/samples_grid.png", f"Generated images (EMA weights, {head.label()})")
    if has_denoise:
        doc.image("figures/denoise_strip.png", "Reverse process: each row is one sample from x_T (left, pure noise) to x_0 (right)")
    doc.heading("Forward process")
    doc.image("figures/forward_strip.png", f"Test images under q(x_t | x_0) at t = {', '.join(map(str, ts))} (left to right)")
    doc.image("figures/schedule.png", "Beta schedule, cumulative signal alpha-bar and signal-to-noise ratio; the other named schedules at the same T for reference")
    doc.heading("Training")
    doc.image("figures/loss.png", "Training loss (the objective's MSE, weighted and plus lambda L_vlb where configured)")
    if metrics.get("over_training"):
        settings = metrics["over_training_settings"]
        training_curve_figure(tables["curve"], metrics["real"], figures / "fid_over_training.png")
        doc.image(
            "figures/fid_over_training.png",
            f"FID of the EMA weights every train.checkpoint_every steps and at the end ({settings['images']} images at "
            f"{settings['sample_steps']} steps each with {head.sampler}, so higher than the headline numbers; the dashed floors are for "
            f"{metrics['protocol']['num_generated']} images). For watching training only: the reported checkpoint is always the final one",
        )
    data_section(doc, card)
    doc.heading("Params")
    doc.paragraph("Training params as stored in the checkpoint, then the sampling plan the samples were drawn with.")
    sampling_rows = [["sample.runs", ", ".join(r.key for r in runs)], ["sample.clip_x0", sampling["clip_x0"]], ["sample.num_samples", sampling["num_samples"]]]
    sampling_rows += [[f"sample.{k}", v] for k, v in dict.fromkeys((k, v) for r in runs for k, v in r.option_values.items())]
    doc.table(["param", "value"], [[k, v] for k, v in flatten(params).items()] + sampling_rows)
    return doc


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
    doc = build(data_dir, model_dir, samples_dir, read_json(evaluation_path), read_json(classifier_metrics), {k: pd.read_csv(v) for k, v in tables.items()}, out)
    (out / "report.md").write_text(doc.to_markdown())
    (out / "report.html").write_text(doc.to_html(out))
    click.echo(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    train_run = read_json(model_dir / "train.json")["run_id"]
    if tracking.run_exists(train_run):
        for name in ("report.html", "report.md"):
            tracking.log_artifact(out / name, "report", run_id=train_run)
        tracking.log_artifacts(out / "figures", "report/figures", run_id=train_run)
    tracking.finish()


if __name__ == "__main__":
    main()
