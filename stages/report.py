"""DVC stage `report`: reports/report.md and a self-contained report.html, built from the
other stages' outputs only (params come from the checkpoint's train.json, not params.yaml)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import pandas as pd
import torch

from ddpmlab import images
from ddpmlab.cli import read_json
from ddpmlab.config import flatten
from ddpmlab.data import ImageSet
from ddpmlab.report import Document, forward_strip, loss_figure, schedule_figure

METRIC_ROWS = [
    ("fid", "FID (lower is better)"),
    ("kid_mean", "KID mean (lower is better)"),
    ("is_mean", "IS mean (higher is better)"),
    ("is_std", "IS std over 10 splits"),
]


def sampler_setting(sampling: dict) -> str:
    return f"eta {sampling['eta']}" if sampling["sampler"] == "ddim" else f"variance `{sampling['variance']}`"


def build(data_dir: Path, model_dir: Path, samples_dir: Path, metrics: dict, classifier: dict, log: pd.DataFrame, schedule: pd.DataFrame, out: Path) -> Document:
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    train = read_json(model_dir / "train.json")
    sampling = read_json(samples_dir / "sampling.json")
    card = read_json(data_dir / "card.json")
    params = train["params"]

    loss_figure(log, figures / "loss.png")
    schedule_figure(schedule, params["schedule"], figures / "schedule.png")
    test = ImageSet.load(data_dir / "test.npz")
    strip, ts = forward_strip(test.images[:4], torch.tensor(schedule["beta"].to_numpy()), columns=9, seed=0)
    scale = images.display_scale(card["image_size"])
    images.save_png(images.upscale(images.grid(strip, columns=len(ts)), scale), figures / "forward_strip.png")
    for src, name in [(data_dir / "real_grid.png", "real_grid.png"), (samples_dir / "grid.png", "samples_grid.png")]:
        shutil.copyfile(src, figures / name)
    has_denoise = (samples_dir / "denoise_strip.png").is_file()
    if has_denoise:
        shutil.copyfile(samples_dir / "denoise_strip.png", figures / "denoise_strip.png")

    ctx = metrics["context"]
    doc = Document(f"ddpmlab report: {params['schedule']} schedule, T = {params['T']}")
    doc.paragraph(
        f"DDPM ({params['objective']}-prediction, L_simple) trained for {train['step']} steps on `{card['source']}` "
        f"({card['train']['count']} train / {card['test']['count']} test images, {card['channels']}x{card['image_size']}x{card['image_size']}), "
        f"U-Net with {train['num_parameters']:,} parameters on {train['device']}. "
        f"Sampled {sampling['num_samples']} images with the `{sampling['sampler']}` sampler, {sampling['steps']} steps, "
        f"{sampler_setting(sampling)}, in {sampling['seconds']:.0f} s ({sampling['seconds_per_sample'] * 1000:.1f} ms per image on {sampling['device']})."
    )
    doc.heading("Metrics")
    doc.paragraph(
        f"Features: `{ctx['extractor']}`, the dataset classifier trained by the `classifier` stage "
        f"(test accuracy {classifier['test_accuracy']:.3f}); penultimate layer for FID / KID, logits for IS. "
        f"Reference: the {ctx['num_reference']} held-out test images. The real-data floor compares {ctx['num_real']} real "
        f"training images with the same reference, exactly as the {ctx['num_generated']} generated images are compared. "
        "These numbers are comparable only with other runs using this extractor and these counts, never with "
        "published Inception-based FIDs (which use 50,000 samples)."
    )
    rows = [[label, metrics[key], metrics["real"][key]] for key, label in METRIC_ROWS]
    rows.append(["FID generated / FID real", metrics["fid_ratio"], 1.0])
    rows.append(["IS generated / IS real", metrics["is_ratio"], 1.0])
    doc.table(["metric", "generated", "real data floor"], rows)

    doc.heading("Samples")
    doc.image("figures/real_grid.png", "Real training images")
    doc.image("figures/samples_grid.png", f"Generated images (EMA weights, {sampling['sampler']}, {sampling['steps']} steps)")
    if has_denoise:
        doc.image("figures/denoise_strip.png", "Reverse process: each row is one sample from x_T (left, pure noise) to x_0 (right)")
    doc.heading("Forward process")
    doc.image("figures/forward_strip.png", f"Test images under q(x_t | x_0) at t = {', '.join(map(str, ts))} (left to right)")
    doc.image("figures/schedule.png", "Beta schedule, cumulative signal alpha-bar and signal-to-noise ratio; the other named schedules at the same T for reference")
    doc.heading("Training")
    doc.image("figures/loss.png", "L_simple during training")
    doc.heading("Params")
    doc.paragraph("Training params as stored in the checkpoint, then the sampling settings the samples were drawn with.")
    sampling_rows = [[f"sample.{k}", sampling[k]] for k in ("sampler", "steps", "variance", "eta", "clip_x0", "num_samples")]
    doc.table(["param", "value"], [[k, v] for k, v in flatten(params).items()] + sampling_rows)
    return doc


@click.command(help=__doc__)
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder (card, test images, real grid).")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `train` (train.json).")
@click.option("--samples", "samples_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `sample`.")
@click.option("--metrics", "metrics_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="metrics.json of `evaluate`.")
@click.option("--classifier-metrics", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier accuracy JSON.")
@click.option("--train-log", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Training log CSV.")
@click.option("--schedule", "schedule_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Schedule CSV (beta_t, alpha-bar_t).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for report.md, report.html, figures/.")
def main(data_dir, model_dir, samples_dir, metrics_path, classifier_metrics, train_log, schedule_path, out) -> None:
    doc = build(
        data_dir, model_dir, samples_dir, read_json(metrics_path), read_json(classifier_metrics),
        pd.read_csv(train_log), pd.read_csv(schedule_path), out,
    )  # fmt: skip
    (out / "report.md").write_text(doc.to_markdown())
    (out / "report.html").write_text(doc.to_html(out))
    click.echo(f"wrote {out / 'report.md'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
