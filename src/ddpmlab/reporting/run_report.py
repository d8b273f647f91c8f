"""The run report of the `report` stage: one training run, its samples and their evaluation, as one
:class:`Document` with its figures under ``out/figures``.

Built from the other stages' outputs only (params come from the checkpoint's train.json, not params.yaml);
the caller reads their JSON records and CSV tables (:class:`ReportInputs`). The sampling, guidance, data and
memorisation sections live in ``sections`` and ``memorisation_section``; the rest of the document is here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ddpmlab.config import flatten
from ddpmlab.data import images
from ddpmlab.data.image_set import ImageSet
from ddpmlab.evaluation import metric_registry
from ddpmlab.reporting.document import Document, Estimate
from ddpmlab.reporting.figures.forward_strip import forward_strip
from ddpmlab.reporting.figures.report import loss_figure, nll_figure, schedule_figure, training_curve_figure
from ddpmlab.reporting.memorisation_section import memorisation_section
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


@dataclass(frozen=True)
class ReportInputs:
    """What the report is built from: the other stages' folders, JSON records (as read) and CSV tables."""

    data_dir: Path  # the prepared data: test.npz, train.npz, real_grid.png
    samples_dir: Path  # the sample stage's output: <run.folder>/samples.npz, grid.png, denoise_strip.png; comparison.png
    card: dict  # the data card (card.json)
    train: dict  # the checkpoint's train.json
    sampling: dict  # sampling.json
    metrics: dict  # evaluation.json
    classifier: dict  # the dataset classifier's accuracy
    tables: dict[str, pd.DataFrame]  # log, schedule, steps, guidance, nll_terms, curve

    @property
    def params(self) -> dict:
        return self.train["params"]


def build_report(inputs: ReportInputs, out: Path) -> Document:
    """The report; its figures are written to ``out/figures``, which the document links as figures/<name>.png."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    params, sampling, metrics, tables = inputs.params, inputs.sampling, inputs.metrics, inputs.tables
    runs = [Run.from_dict(entry) for entry in sampling["runs"]]
    head = runs[0]
    loss_figure(tables["log"], figures / "loss.png")
    schedule_figure(tables["schedule"], params["schedule"], figures / "schedule.png")
    ts = _forward_strip_png(inputs, figures / "forward_strip.png")
    has_denoise = _copy_stage_figures(inputs, head, figures)

    doc = Document(f"ddpmlab report: {params['schedule']} schedule, T = {params['T']}")
    doc.paragraph(_summary_text(inputs, runs))
    doc.paragraph(_headline_text(metrics, head))
    doc.heading("Metrics")
    doc.paragraph(protocol_text(metrics["protocol"], inputs.classifier))
    _metrics_table(doc, metrics, head)
    sampling_section(doc, tables["steps"], step_sweep(runs), sampling, metrics["real"], figures, metrics.get("comparisons"))
    if len(tables["guidance"]):
        class_names = inputs.card.get("classes") or [str(c) for c in range(sampling["num_classes"])]
        guidance_section(doc, tables["guidance"], metrics, sampling, runs, inputs.samples_dir, class_names, figures)
    with np.load(inputs.samples_dir / head.folder / "samples.npz") as f:
        generated = f["images"]
    train_images = ImageSet.load(inputs.data_dir / "train.npz").images
    memorisation_section(doc, tables["steps"], metrics["memorisation"], metrics["real"], generated, train_images, figures)
    _likelihood_section(doc, metrics.get("nll"), tables["nll_terms"], inputs.card, figures)
    _samples_section(doc, head, has_denoise)
    _forward_process_section(doc, ts)
    _training_section(doc, metrics, tables["curve"], head, figures)
    data_section(doc, inputs.card)
    _params_section(doc, params, runs, sampling)
    return doc


def _forward_strip_png(inputs: ReportInputs, path: Path) -> list[int]:
    """Four test images under the run's schedule at 9 evenly spaced t, as one PNG; returns those t."""
    test = ImageSet.load(inputs.data_dir / "test.npz")
    strip, ts = forward_strip(test.images[:4], torch.tensor(inputs.tables["schedule"]["beta"].to_numpy()), columns=9, seed=0)
    images.save_png(images.upscale(images.grid(strip, columns=len(ts)), images.display_scale(inputs.card["image_size"])), path)
    return ts


def _copy_stage_figures(inputs: ReportInputs, head: Run, figures: Path) -> bool:
    """The images the prepare and sample stages drew, copied next to the report's own; whether the headline
    run has a denoising strip (sample.strip_images may be 0)."""
    run_dir = inputs.samples_dir / head.folder
    copies = {
        "real_grid.png": inputs.data_dir / "real_grid.png",
        "samples_grid.png": run_dir / "grid.png",
        "comparison.png": inputs.samples_dir / "comparison.png",
    }
    if (run_dir / "denoise_strip.png").is_file():
        copies["denoise_strip.png"] = run_dir / "denoise_strip.png"
    for name, src in copies.items():
        shutil.copyfile(src, figures / name)
    return "denoise_strip.png" in copies


def _summary_text(inputs: ReportInputs, runs: list[Run]) -> str:
    """The opening paragraph: what was trained on what, and how it was sampled."""
    params, train, card, sampling = inputs.params, inputs.train, inputs.card, inputs.sampling
    head, head_entry = runs[0], sampling["runs"][0]
    return (
        f"DDPM ({params['objective']}-prediction, {loss_setting(params['train'])}) trained for {train['step']} steps on `{card['source']}` "
        f"({card['train']['count']} train / {card['test']['count']} test images, {card['channels']}x{card['image_size']}x{card['image_size']}), "
        f"U-Net with {train['num_parameters']:,} parameters on {train['device']}{_how_it_ran(train)}. Sampled {sampling['num_samples']} images "
        f"per run with {plan_text(runs)} on {sampling['device']}{_how_it_ran(sampling)}; the headline numbers are those of the first run, {head.label()} "
        f"({head.nfe} network evaluations, {head_entry['seconds_per_sample'] * 1000:.1f} ms per image)."
    )


CHOSEN_BY = {"explicit": "as set in params", "probe": "auto: the fastest when timed", "cache": "auto: this machine's cached timing",
             "checkpoint": "as the resumed run started"}  # nn.execution: EXPLICIT, PROBED, CACHED, RESUMED  # fmt: skip


def _how_it_ran(record: dict) -> str:
    """' (AMD EPYC, 2 threads; bf16 nchw, auto: ...)' of a train.json / sampling.json; '' for records made before it was recorded."""
    execution = record.get("execution")
    if not execution:
        return ""
    return f" ({execution['processor']}, {execution['threads']} threads; {execution['label']}, {CHOSEN_BY[execution['chosen_by']]})"


def _headline_text(metrics: dict, run: Run) -> str:
    """The conclusion in one paragraph: the headline FID and the floor with their intervals, and what they say."""
    generated, real = metrics["by_run"][run.key], metrics["real"]
    n = metrics["protocol"]["num_generated"]
    text = f"Headline: {run.key} scores FID {Estimate.of(generated, 'fid')} against the test split; real images scored the same way give {Estimate.of(real, 'fid')}."
    comparisons = metrics.get("comparisons")
    if not comparisons:
        return text + " No intervals were computed (evaluate.jackknife_groups = 0), so no difference here can be called real."
    text += " " + floor_sentence(run.key, comparisons, n)
    widest = comparisons["by_budget"][-1]
    others = len(widest["tied"]) - 1
    text += (f" Over the whole sweep the lowest FID is {widest['best']}'s; "
             + (f"{others} other run{'s' if others > 1 else ''} cannot be told apart from it." if others else "every other run is detectably worse.")
             + f" Intervals are {comparisons['level']:.0%} grouped-jackknife intervals over {metrics['protocol']['intervals']['groups']} groups"
             " of the images; they cover sampling noise, not the training seed.")  # fmt: skip
    return text


def _metrics_table(doc: Document, metrics: dict, run: Run) -> None:
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


def _likelihood_section(doc: Document, nll: dict | None, terms: pd.DataFrame, card: dict, figures: Path) -> None:
    """The NLL bound in bits/dim with its terms and their figure; nll: evaluation.json's record (None: not computed)."""
    doc.heading("Likelihood")
    if not nll:
        doc.paragraph("Not computed (evaluate.nll_images is 0).")
        return
    nll_figure(terms, figures / "nll.png")
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


def _samples_section(doc: Document, head: Run, has_denoise: bool) -> None:
    """Real and generated images side by side, and the reverse process where the sample stage drew it."""
    doc.heading("Samples")
    doc.image("figures/real_grid.png", "Real training images")
    doc.image("figures/samples_grid.png", f"Generated images (EMA weights, {head.label()})")
    if has_denoise:
        doc.image("figures/denoise_strip.png", "Reverse process: each row is one sample from x_T (left, pure noise) to x_0 (right)")


def _forward_process_section(doc: Document, ts: list[int]) -> None:
    """The forward strip (drawn at ``ts``) and the schedule beside the other named ones."""
    doc.heading("Forward process")
    doc.image("figures/forward_strip.png", f"Test images under q(x_t | x_0) at t = {', '.join(map(str, ts))} (left to right)")
    doc.image("figures/schedule.png", "Beta schedule, cumulative signal alpha-bar and signal-to-noise ratio; the other named schedules at the same T for reference")


def _training_section(doc: Document, metrics: dict, curve: pd.DataFrame, head: Run, figures: Path) -> None:
    """The training loss and, where evaluate.over_training ran, FID of the checkpoints along the way."""
    doc.heading("Training")
    doc.image("figures/loss.png", "Training loss (the objective's MSE, weighted and plus lambda L_vlb where configured)")
    if not metrics.get("over_training"):
        return
    settings = metrics["over_training_settings"]
    training_curve_figure(curve, metrics["real"], figures / "fid_over_training.png")
    doc.image(
        "figures/fid_over_training.png",
        f"FID of the EMA weights every train.checkpoint_every steps and at the end ({settings['images']} images at "
        f"{settings['sample_steps']} steps each with {head.sampler}, so higher than the headline numbers; the dashed floors are for "
        f"{metrics['protocol']['num_generated']} images). For watching training only: the reported checkpoint is always the final one",
    )


def _params_section(doc: Document, params: dict, runs: list[Run], sampling: dict) -> None:
    """Training params as stored in the checkpoint, then the sampling plan."""
    doc.heading("Params")
    doc.paragraph("Training params as stored in the checkpoint, then the sampling plan the samples were drawn with.")
    sampling_rows = [["sample.runs", ", ".join(r.key for r in runs)], ["sample.clip_x0", sampling["clip_x0"]], ["sample.num_samples", sampling["num_samples"]]]
    sampling_rows += [[f"sample.{k}", v] for k, v in dict.fromkeys((k, v) for r in runs for k, v in r.option_values.items())]
    doc.table(["param", "value"], [[k, v] for k, v in flatten(params).items()] + sampling_rows)
