"""Sections of the report stage's document: the protocol, the sampling sweep, guidance and the data card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ddpmlab.reporting.document import Document, Estimate
from ddpmlab.reporting.figures.report import class_grid_figure, guidance_figure, nfe_figure, step_grids_figure
from ddpmlab.sampling.plan import Run, guidance_sweep, step_sweep


def loss_setting(train: dict) -> str:
    weighting = f"min-SNR-{train['min_snr_gamma']:g} weighting" if train.get("weighting") == "min_snr" else "MSE"
    if train.get("learn_variance"):
        return f"{weighting} + {train['vlb_weight']:g} L_vlb with learned variance"
    return weighting


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
        f"{protocol['model_mode']} mode. {n} generated images per run against two references, the un-augmented test "
        f"split ({refs['test']} images, the headline) and training split ({refs['train']} images); the DDPM paper reports both "
        f"(CIFAR-10 FID 5.24 against test, 3.17 against train). The paper protocol is 50,000 generated images: FID is biased "
        f"upward at small N, so compare FIDs only at equal N and against the real-data floor, real images scored the same "
        f"way ({real['test']} training images against the test split, {real['train']} test images against the training split). "
        f"KID: {protocol['kid_subsets']} subsets of {protocol['kid_subset_size']}; IS: {protocol['isc_splits']} splits; "
        f"precision / recall (Kynkaanniemi et al. 2019): k = {protocol['prc_neighborhood']} neighbourhoods, equally many images on both "
        f"sides ({_prc_sizes(protocol)}; the reference side a subset drawn with seed [{protocol['seed']}, split index]); seed {protocol['seed']}. "
        "The reported checkpoint is always the last one: no checkpoint is selected on the reported splits."
    )


def _prc_sizes(protocol: dict) -> str:
    sizes = protocol.get("prc_images") or {}
    return ", ".join(f"{n} vs {split}" for split, n in sizes.items()) or "all reference images"


def plan_text(runs: list[Run]) -> str:
    """What the sample stage drew, e.g. "ddpm, ddim and dpmpp_2m at 50, 20, 10 and 5 steps (uniform grid), and w = 1, 3 at ddpm, 50 steps"."""
    sweep = step_sweep(runs)
    samplers = list(dict.fromkeys(r.sampler for r in sweep))
    steps = list(dict.fromkeys(r.steps for r in sweep))
    spacings = list(dict.fromkeys(r.spacing for r in sweep))
    text = f"{_and(samplers)} at {_and([str(s) for s in steps])} steps ({_and(spacings)} grid{'s' if len(spacings) > 1 else ''})"
    head = runs[0]
    if head.guidance is None:
        return text
    others = [r for r in runs if r.guidance != head.guidance]
    text += f" at guidance w = {head.guidance:g}"
    return text + (f", and w = {', '.join(f'{r.guidance:g}' for r in others)} at {head.label(with_guidance=False)}" if others else "")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def options_text(runs: list[Run]) -> str:
    """The samplers' own options, e.g. "ddpm: variance fixed_large; ddim: eta 0"."""
    parts = dict.fromkeys(f"{r.sampler}: " + ", ".join(f"{k} {v}" for k, v in r.option_values.items()) for r in runs if r.option_values)
    return "; ".join(parts) or "none"


def best_by_budget(rows: pd.DataFrame, budgets: tuple[int, ...] = (5, 10, 20, 50)) -> list[list]:
    """Per NFE budget: the run with the lowest FID among those that spend at most that many evaluations
    (no intervals: for evaluations made with evaluate.jackknife_groups = 0)."""
    out = []
    for budget in budgets:
        within = rows[rows["nfe"] <= budget]
        if len(within):
            best = within.loc[within["fid"].idxmin()]
            out.append([budget, best["key"], best["nfe"], best["fid"], best["fid_ratio"]])
    return out


# The vs-floor verdict in a table cell: above it, not told apart from it, below it.
FLOOR_LABELS = {"above the floor": "above", "indistinguishable from the floor": "tied", "below the floor": "below"}


def real_label(entry: dict | None) -> str:
    """The exact test's verdict in a table cell: "differs (p 0.001)" or "not told apart (would find a FID gap >= 0.93)"."""
    if not entry:
        return ""
    if entry["detected"]:
        return f"differs (adj. p {entry['q']:.2g})"
    return f"not told apart (would find a FID gap >= {entry['detectable_fid']:.2g})"


def difference_text(entry: dict) -> str:
    """"+0.94 [-1.21, 3.27]": a paired difference and its interval."""
    return f"{entry['difference']:+.3g} [{entry['low']:.3g}, {entry['high']:.3g}]"


def floor_sentence(key: str, comparisons: dict, num_generated: int) -> str:
    """What a run's FID says against the real-data floor, with the paired difference and its interval."""
    entry = comparisons["vs_floor"][key]
    gap = f"FID minus the floor's {difference_text(entry)}"
    if entry["verdict"] == "above the floor":
        return f"{key} is above the real-data floor by more than the sampling noise at N = {num_generated} ({gap})."
    if entry["verdict"] == "below the floor":
        return (f"{key} scores below the real-data floor ({gap}): at N = {num_generated} this protocol cannot resolve it from real "
                "images, which is not the same as being better than real data.")  # fmt: skip
    return (f"{key} cannot be told apart from the real-data floor at N = {num_generated} ({gap}); more images could still "
            "separate them.")  # fmt: skip


def budget_rows(comparisons: dict) -> list[list]:
    """Per NFE budget: the lowest FID, the runs tied with it, those detectably worse; all paired."""
    out = []
    for budget in comparisons["by_budget"]:
        runs = {r["run"]: r for r in budget["runs"]}
        best = runs[budget["best"]]
        tied = [f"{k} ({difference_text(runs[k])})" for k in budget["tied"] if k != budget["best"]]
        worse = [k for k, r in runs.items() if r["detected"]]
        out.append([budget["budget"], budget["best"], best["fid"], "; ".join(tied) or "none", len(worse)])
    return out


def sampling_section(doc: Document, rows: pd.DataFrame, runs: list[Run], sampling: dict, real: dict, figures: Path, comparisons: dict | None = None) -> None:
    """The sampler x steps sweep: FID / IS against NFE, which runs can be told apart per budget, the
    table with intervals, and the same seeds in every run. comparisons: evaluation.json's paired verdicts."""
    doc.heading("Sampling")
    doc.paragraph(
        f"Every run samples the same {sampling['num_samples']} seeds from the same checkpoint, so each image starts from the same "
        f"x_T: {plan_text(runs)}, respaced out of T = {sampling['T']} (sample.spacing; `ddpmlab.core.step_grids`). Sampler options: "
        f"{options_text(runs)}. NFE counts network evaluations per image (Heun: 2N - 1 for N steps; guided runs twice). "
        f"The real-data floor is FID {Estimate.of(real, 'fid')}."
    )
    nfe_figure(rows, real, figures / "nfe.png")
    doc.image("figures/nfe.png", "FID (log scale) and IS against network evaluations per image, one line per sampler, bars: 95% "
              "intervals; dashed: real images scored the same way")  # fmt: skip
    if comparisons:
        doc.paragraph(
            f"Which runs differ: per NFE budget, the run with the lowest FID among those spending at most that many evaluations, and "
            f"every run not detectably worse than it (tied: not told apart at N = {sampling['num_samples']}). Paired jackknife over the "
            "same images (same x_T) and the same reference groups, each difference with its 95% interval; a difference counts as "
            f"detected when its p-value, adjusted across the table, is at most {comparisons.get('alpha', 0.05):.0%}: "
            f"{comparisons.get('by_budget_family', 'no correction')} (`ddpmlab.evaluation.verdicts`). The floor verdicts below are "
            f"a second family: {comparisons.get('vs_floor_family', 'no correction')}. These intervals cover sampling noise of this one "
            "checkpoint; another training seed moves FID too, which `ddpmlab compare` over replicates (train.seed) measures."
        )
        if comparisons.get("vs_real"):
            doc.paragraph(
                f"Against real data directly (column *vs real data*): {comparisons['vs_real_method']} "
                "(`ddpmlab.evaluation.real_data_test`), a third family: "
                f"{comparisons['vs_real_family']}. Where it finds no difference, it names the FID gap it would have found 80% of the "
                "time at these sizes: that is the resolution of \"indistinguishable\" here, and more images lower it."
            )
        doc.table(["NFE budget", "lowest FID", "FID", "tied with it (FID difference [95% CI])", "runs detectably worse"], budget_rows(comparisons))
    else:
        doc.paragraph("No intervals (evaluate.jackknife_groups = 0): the lowest FID per budget is listed without saying whether it differs from the others.")
        doc.table(["NFE budget", "best run", "NFE", "FID", "FID / real"], best_by_budget(rows))
    floor = comparisons["vs_floor"] if comparisons else {}
    against_real = (comparisons or {}).get("vs_real") or {}
    doc.table(
        ["run", "sampler", "spacing", "steps", "NFE", "FID [95% CI]", "vs real floor", "vs real data", "FID / real", "FID vs train", "IS", "KID",
         "precision", "recall", "endpoint error", "ms per image"],
        [[r["key"], r["sampler"], r["spacing"], r["steps"], r["nfe"], Estimate.of(r, "fid"), FLOOR_LABELS.get(floor.get(r["key"], {}).get("verdict"), ""),
          real_label(against_real.get(r["key"])),
          Estimate.of(r, "fid_ratio"), Estimate.of(r, "fid_train"), Estimate.of(r, "is_mean"), Estimate.of(r, "kid_mean"),
          Estimate.of(r, "precision"), Estimate.of(r, "recall"), Estimate.of(r, "endpoint_error") if pd.notna(r.get("endpoint_error")) else "",
          round(r["seconds_per_sample"] * 1000, 2)]
         for _, r in rows.sort_values(["sampler", "spacing", "nfe"]).iterrows()],
    )  # fmt: skip
    reference = sampling.get("endpoint_reference") or {}
    if reference.get("images"):
        doc.paragraph(
            f"Endpoint error (deterministic runs): root-mean-square pixel distance, in the data range [-1, 1], between a run's image and "
            f"the {reference['sampler']} solution on {reference['steps']} steps from the same x_T, mean over the first {reference['images']} "
            "images with a 95% interval (`ddpmlab.sampling.endpoint`). It measures the solver's error alone and keeps "
            "separating samplers where FID sits at the floor."
        )
    if step_grids_figure(sampling["runs"], sampling["T"], figures / "grids.png"):
        doc.image("figures/grids.png", "The timesteps each few-step run visits; searched grids (sample.spacing searched) were found on this "
                  "model by the `search` stage, by lowest endpoint error on its own x_T")  # fmt: skip
    doc.paragraph(f"Times are wall-clock seconds of the `sample` stage on {sampling['device']}, divided by the {sampling['num_samples']} images.")
    doc.image("figures/comparison.png", "The first images of every run: one row per sampler, one column per step count (same seeds everywhere)")


def guidance_section(doc: Document, sweep: pd.DataFrame, metrics: dict, sampling: dict, runs: list[Run], samples_dir: Path, class_names: list[str], figures: Path) -> None:
    """Conditional models: the guidance sweep's table, trade-off figure and a class x samples grid per w (rows named by ``class_names``)."""
    head = runs[0]
    doc.heading("Classifier-free guidance")
    per_class = metrics.get("per_class_fid") or {}
    doc.paragraph(
        f"Class-conditional model ({sampling['num_classes']} classes; image i asked to be class i mod {sampling['num_classes']}), sampled at "
        f"{head.label(with_guidance=False)} with eps~ = (1 + w) eps(x, t, y) - w eps(x, t, no class) (Ho & Salimans 2022, eq. 6). Conditional accuracy is the "
        "dataset classifier's accuracy on the generated images against the classes asked for; per-class FID compares the images of each "
        f"class with the training split's images of that class (mean over classes; computed where every class has at least "
        f"{per_class.get('min_images_per_class', 50)} images on both sides, else blank)."
    )
    rows = [[f"{r.guidance:g}", r.fid, r.fid_train, r.is_mean, r.cond_accuracy, "" if pd.isna(r.per_class_fid) else r.per_class_fid] for r in sweep.itertuples()]
    doc.table(["w", "FID", "FID vs train", "IS", "conditional accuracy", "per-class FID"], rows)
    guidance_figure(sweep, metrics["real"], figures / "guidance.png")
    doc.image("figures/guidance.png", "FID and conditional accuracy against the guidance weight w, and FID against accuracy (each point one w)")
    for run in guidance_sweep(runs):
        with np.load(samples_dir / run.folder / "samples.npz") as f:
            if "labels" not in f:
                continue
            name = f"class_grid_w{run.guidance:g}.png"
            class_grid_figure(f["images"], f["labels"], class_names, f"w = {run.guidance:g} ({run.label(with_guidance=False)})", figures / name)
        doc.image(f"figures/{name}", f"w = {run.guidance:g}: one row per class, the first 10 images asked to be that class")


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
