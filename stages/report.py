"""DVC stage `report`: reports/report.md and a self-contained report.html, built from the
other stages' outputs only (params come from the checkpoint's train.json, not params.yaml).
The report and its figures are also logged to the MLflow training run (artifacts under report/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import pandas as pd
import torch

from ddpmlab import images, tracking
from ddpmlab.cli import read_json, stage_errors
from ddpmlab.config import flatten
from ddpmlab.data import ImageSet
from ddpmlab.report import (
    Document,
    forward_strip,
    guidance_figure,
    loss_figure,
    nll_figure,
    schedule_figure,
    steps_figure,
    training_curve_figure,
)

METRIC_ROWS = [  # (key, label, depends on the reference split)
    ("fid", "FID (lower is better)", True),
    ("kid_mean", "KID mean (lower is better)", True),
    ("kid_std", "KID std over subsets", True),
    ("precision", "precision (share of generated images on the real manifold)", True),
    ("recall", "recall (share of real images covered by the generated ones)", True),
    ("is_mean", "IS mean (higher is better)", False),
    ("is_std", "IS std over splits", False),
]


def loss_setting(train: dict) -> str:
    weighting = f"min-SNR-{train['min_snr_gamma']:g} weighting" if train.get("weighting") == "min_snr" else "MSE"
    if train.get("learn_variance"):
        return f"{weighting} + {train['vlb_weight']:g} L_vlb with learned variance"
    return weighting


def sampler_setting(sampling: dict) -> str:
    return f"eta {sampling['eta']}" if sampling["sampler"] == "ddim" else f"variance `{sampling['variance']}`"


def step_counts(sampling: dict) -> str:
    """The step counts of the first guidance weight's runs (all runs for unconditional models): "100, 50, 20"."""
    runs = sampling["runs"]
    first_w = runs[0].get("guidance")
    return ", ".join(str(r["steps"]) for r in runs if r.get("guidance") == first_w)


def sampled_text(sampling: dict) -> str:
    """What the sample stage drew: "100, 50 steps" or, with guidance, "100, 50 steps at w = 0, and w = 1, 3 at 100 steps"."""
    runs = sampling["runs"]
    first_w = runs[0].get("guidance")
    text = f"{step_counts(sampling)} steps"
    if first_w is None:
        return text
    others = [r for r in runs if r.get("guidance") != first_w]
    if not others:
        return f"{text} at guidance w = {first_w:g}"
    weights = ", ".join(f"{r['guidance']:g}" for r in others)
    return f"{text} at guidance w = {first_w:g}, and w = {weights} at {others[0]['steps']} steps"


def protocol_text(protocol: dict, classifier: dict) -> str:
    """The evaluation protocol in words: what the numbers below can and cannot be compared with."""
    if protocol["feature_extractor"] == "inception-v3-compat":
        features = (
            "Features: torch-fidelity's `inception-v3-compat` (the TF-Inception port published FIDs use; pool3 features "
            f"for FID / KID / precision-recall, unbiased logits for IS), weights sha256 {protocol['extractor_weights_sha256'][:12]}."
        )
    else:
        features = (
            f"Features: the dataset classifier of the `classifier` stage (test accuracy {classifier['test_accuracy']:.3f}); "
            "penultimate layer for FID / KID / precision-recall, logits for IS. These numbers are comparable only with "
            "ddpmlab runs using this extractor, never with published Inception-based FIDs."
        )
    n, real = protocol["num_generated"], protocol["num_real"]
    refs = protocol["reference_images"]
    return (
        f"{features} Model: {protocol['weights'].upper()} weights at training step {protocol['checkpoint_step']}, in "
        f"{protocol['model_mode']} mode. {n} generated images per step count against two references, the un-augmented test "
        f"split ({refs['test']} images, the headline) and training split ({refs['train']} images); the DDPM paper reports both "
        f"(CIFAR-10 FID 5.24 against test, 3.17 against train). The paper protocol is 50,000 generated images: FID is biased "
        f"upward at small N, so compare FIDs only at equal N and against the real-data floor, real images scored the same "
        f"way ({real['test']} training images against the test split, {real['train']} test images against the training split). "
        f"KID: {protocol['kid_subsets']} subsets of {protocol['kid_subset_size']}; IS: {protocol['isc_splits']} splits; "
        f"precision / recall: k = {protocol['prc_neighborhood']} neighbourhoods; seed {protocol['seed']}. "
        "The reported checkpoint is always the last one: no checkpoint is selected on the reported splits."
    )


def build(
    data_dir: Path, model_dir: Path, samples_dir: Path, metrics: dict, classifier: dict,
    log: pd.DataFrame, schedule: pd.DataFrame, steps: pd.DataFrame, nll_terms: pd.DataFrame, curve: pd.DataFrame, out: Path,
    guidance: pd.DataFrame | None = None,
) -> Document:  # fmt: skip
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    train = read_json(model_dir / "train.json")
    sampling = read_json(samples_dir / "sampling.json")
    card = read_json(data_dir / "card.json")
    params = train["params"]

    loss_figure(log, figures / "loss.png")
    steps_figure(steps, metrics["real"], figures / "steps.png")
    headline = sampling["runs"][0]
    schedule_figure(schedule, params["schedule"], figures / "schedule.png")
    test = ImageSet.load(data_dir / "test.npz")
    strip, ts = forward_strip(test.images[:4], torch.tensor(schedule["beta"].to_numpy()), columns=9, seed=0)
    scale = images.display_scale(card["image_size"])
    images.save_png(images.upscale(images.grid(strip, columns=len(ts)), scale), figures / "forward_strip.png")
    headline_dir = samples_dir / headline["folder"]
    copies = [(data_dir / "real_grid.png", "real_grid.png"), (headline_dir / "grid.png", "samples_grid.png"), (samples_dir / "steps_comparison.png", "steps_comparison.png")]
    for src, name in copies:
        shutil.copyfile(src, figures / name)
    has_denoise = (headline_dir / "denoise_strip.png").is_file()
    if has_denoise:
        shutil.copyfile(headline_dir / "denoise_strip.png", figures / "denoise_strip.png")

    protocol = metrics["protocol"]
    doc = Document(f"ddpmlab report: {params['schedule']} schedule, T = {params['T']}")
    doc.paragraph(
        f"DDPM ({params['objective']}-prediction, {loss_setting(params['train'])}) trained for {train['step']} steps on `{card['source']}` "
        f"({card['train']['count']} train / {card['test']['count']} test images, {card['channels']}x{card['image_size']}x{card['image_size']}), "
        f"U-Net with {train['num_parameters']:,} parameters on {train['device']}. "
        f"Sampled {sampling['num_samples']} images with the `{sampling['sampler']}` sampler, {sampler_setting(sampling)}, "
        f"at {sampled_text(sampling)} (respaced out of T = {sampling['T']}) on {sampling['device']}; "
        f"the headline numbers are at {headline['steps']} steps ({headline['seconds_per_sample'] * 1000:.1f} ms per image)."
    )
    doc.heading("Metrics")
    doc.paragraph(protocol_text(protocol, classifier))
    generated = metrics["by_steps"][headline.get("key", str(headline["steps"]))]  # every metric of the headline run
    rows = []
    for key, label, per_split in METRIC_ROWS:
        train_cells = [generated[f"{key}_train"], metrics["real"][f"{key}_train"]] if per_split else ["", ""]
        rows.append([label, generated[key], metrics["real"][key], *train_cells])
    rows.append(["FID generated / FID real", metrics["fid_ratio"], 1.0, "", ""])
    rows.append(["IS generated / IS real", metrics["is_ratio"], 1.0, "", ""])
    doc.table(
        ["metric", f"generated ({headline['steps']} steps) vs test", "real floor vs test", "generated vs train", "real floor vs train"], rows
    )

    doc.heading("Sampling steps")
    doc.paragraph(
        "Every step count samples the same seeds from the same checkpoint, so each image starts from the same x_T; "
        "fewer steps run the same sampler on a respaced grid of timesteps (Nichol & Dhariwal 2021)."
    )
    step_rows = [
        [r.steps, r.fid, r.fid_train, r.fid_ratio, r.is_mean, r.kid_mean, r.precision, r.recall, r.network_evals_per_sample, r.seconds_per_sample * 1000, r.images_per_s]
        for r in steps.itertuples()
    ]
    doc.table(
        ["steps", "FID", "FID vs train", "FID / real", "IS", "KID", "precision", "recall", "network evals per image", "ms per image", "images/s"], step_rows
    )
    doc.paragraph(f"Times are wall-clock seconds of the `sample` stage on {sampling['device']}, divided by the {sampling['num_samples']} images.")
    doc.image("figures/steps.png", "FID, IS and sampling time against the number of sampling steps (log x)")
    doc.image("figures/steps_comparison.png", f"The first images at each step count, one row per count ({step_counts(sampling)}, top to bottom)")

    if guidance is not None and len(guidance):
        guidance_section(doc, guidance, metrics, sampling, samples_dir, figures, scale)

    nll = metrics.get("nll")
    doc.heading("Likelihood")
    if nll:
        nll_figure(nll_terms, figures / "nll.png")
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
    doc.image("figures/samples_grid.png", f"Generated images (EMA weights, {sampling['sampler']}, {headline['steps']} steps)")
    if has_denoise:
        doc.image("figures/denoise_strip.png", "Reverse process: each row is one sample from x_T (left, pure noise) to x_0 (right)")
    doc.heading("Forward process")
    doc.image("figures/forward_strip.png", f"Test images under q(x_t | x_0) at t = {', '.join(map(str, ts))} (left to right)")
    doc.image("figures/schedule.png", "Beta schedule, cumulative signal alpha-bar and signal-to-noise ratio; the other named schedules at the same T for reference")
    doc.heading("Training")
    doc.image("figures/loss.png", "Training loss (the objective's MSE, weighted and plus lambda L_vlb where configured)")
    over = metrics.get("over_training")
    if over:
        training_curve_figure(curve, metrics["real"], figures / "fid_over_training.png")
        doc.image(
            "figures/fid_over_training.png",
            f"FID of the EMA weights every train.checkpoint_every steps and at the end ({over['images']} images at "
            f"{over['sample_steps']} steps each, so higher than the headline numbers; the dashed floors are for "
            f"{protocol['num_generated']} images). For watching training only: "
            "the reported checkpoint is always the final one",
        )
    data_section(doc, card)
    doc.heading("Params")
    doc.paragraph("Training params as stored in the checkpoint, then the sampling settings the samples were drawn with.")
    sampling_rows = [[f"sample.{k}", sampling[k]] for k in ("sampler", "variance", "eta", "clip_x0", "num_samples")]
    sampling_rows.append(["sample.steps", step_counts(sampling)])
    if sampling["runs"][0].get("guidance") is not None:
        sampling_rows.append(["sample.guidance", ", ".join(dict.fromkeys(f"{r['guidance']:g}" for r in sampling["runs"]))])
    doc.table(["param", "value"], [[k, v] for k, v in flatten(params).items()] + sampling_rows)
    return doc


def guidance_section(doc: Document, sweep: pd.DataFrame, metrics: dict, sampling: dict, samples_dir: Path, figures: Path, scale: int) -> None:
    """Conditional models: the guidance sweep's table, trade-off figure and a class x samples grid per w."""
    steps = int(sweep["steps"].iloc[0])
    doc.heading("Classifier-free guidance")
    per_class = metrics.get("per_class_fid") or {}
    doc.paragraph(
        f"Class-conditional model ({sampling['num_classes']} classes; image i asked to be class i mod {sampling['num_classes']}), sampled at "
        f"{steps} steps with eps~ = (1 + w) eps(x, t, y) - w eps(x, t, no class) (Ho & Salimans 2022, eq. 6). Conditional accuracy is the "
        "dataset classifier's accuracy on the generated images against the classes asked for; per-class FID compares the images of each "
        f"class with the training split's images of that class (mean over classes; computed where every class has at least "
        f"{per_class.get('min_images_per_class', 50)} images on both sides, else blank)."
    )
    rows = [[f"{r.guidance:g}", r.fid, r.fid_train, r.is_mean, r.cond_accuracy, "" if pd.isna(r.per_class_fid) else r.per_class_fid] for r in sweep.itertuples()]
    doc.table(["w", "FID", "FID vs train", "IS", "conditional accuracy", "per-class FID"], rows)
    guidance_figure(sweep, metrics["real"], figures / "guidance.png")
    doc.image("figures/guidance.png", "FID and conditional accuracy against the guidance weight w, and FID against accuracy (each point one w)")
    for run in sampling["runs"]:
        if run["steps"] == steps and run.get("guidance") is not None and (samples_dir / run["folder"] / "class_grid.png").is_file():
            name = f"class_grid_w{run['guidance']:g}.png"
            shutil.copyfile(samples_dir / run["folder"] / "class_grid.png", figures / name)
            doc.image(f"figures/{name}", f"w = {run['guidance']:g}: one row per class (0 at the top), the first 10 images asked to be that class")


def data_section(doc: Document, card: dict) -> None:
    """The dataset card: what the model was trained and evaluated on, and where it came from."""
    origin = card.get("origin", {})
    doc.heading("Data")
    where = origin.get("files") or origin.get("folder") or origin.get("package", "")
    verified = f"; {origin['verified']}" if origin.get("verified") else ""
    doc.paragraph(f"`{card['source']}` from {where}{verified}. Content SHA-256 of the prepared arrays: `{card['content_sha256'][:16]}`.")
    if origin.get("skipped"):
        shown = "; ".join(origin["skipped_files"][:10])
        doc.paragraph(f"**{origin['skipped']} of {origin['files']} files were skipped as unreadable** (data.skip_bad): {shown}.")
    stats = ", ".join(f"{m:.3f} / {s:.3f}" for m, s in zip(card["channel_mean"], card["channel_std"]))
    doc.table(
        ["", "value"],
        [["images", f"{card['channels']} x {card['image_size']} x {card['image_size']}, uint8"],
         ["train / test", f"{card['train']['count']} / {card['test']['count']}"],
         ["pixel mean / std per channel (0..1)", stats]],
    )  # fmt: skip
    classes = card.get("classes") or [str(i) for i in range(card["num_classes"])]
    doc.table(["class", "train", "test"], [[name, tr, te] for name, tr, te in zip(classes, card["train"]["per_class"], card["test"]["per_class"])])


@click.command(help=__doc__)
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder (card, test images, real grid).")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `train` (train.json).")
@click.option("--samples", "samples_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output folder of `sample`.")
@click.option("--evaluation", "evaluation_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="evaluation.json of `evaluate`.")
@click.option("--classifier-metrics", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Classifier accuracy JSON.")
@click.option("--train-log", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Training log CSV.")
@click.option("--schedule", "schedule_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Schedule CSV (beta_t, alpha-bar_t).")
@click.option("--steps-csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Metrics per sampling step count.")
@click.option("--guidance-csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Metrics per guidance weight (conditional models).")
@click.option("--nll-terms", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="NLL bound terms per t.")
@click.option("--training-curve", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="FID per training checkpoint.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for report.md, report.html, figures/.")
@stage_errors
def main(data_dir, model_dir, samples_dir, evaluation_path, classifier_metrics, train_log, schedule_path, steps_csv, guidance_csv, nll_terms, training_curve, out) -> None:
    tracking.require_reachable()  # else MLflow's client retries a dead server for minutes
    doc = build(
        data_dir, model_dir, samples_dir, read_json(evaluation_path), read_json(classifier_metrics), pd.read_csv(train_log),
        pd.read_csv(schedule_path), pd.read_csv(steps_csv), pd.read_csv(nll_terms), pd.read_csv(training_curve), out, pd.read_csv(guidance_csv),
    )  # fmt: skip
    (out / "report.md").write_text(doc.to_markdown())
    (out / "report.html").write_text(doc.to_html(out))
    click.echo(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    train_run = read_json(model_dir / "train.json")["run_id"]
    if tracking.run_exists(train_run):
        for name in ("report.html", "report.md"):
            tracking.log_artifact(out / name, "report", run_id=train_run)
        tracking.log_artifacts(out / "figures", "report/figures", run_id=train_run)


if __name__ == "__main__":
    main()
