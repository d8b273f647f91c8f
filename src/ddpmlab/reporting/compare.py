"""Cross-experiment comparison: which schedule, which sampler, how many sampling steps.

Works on one DataFrame of runs in the layout of ``mlflow.search_runs`` (``params.*``,
``metrics.*``, ``tags.*`` columns), so a single search call feeds everything here and this
module never talks to MLflow itself. Evaluation runs (one per sampling step count, tagged
``ddpmlab.stage=evaluate``) carry the training params they were sampled from and the id of
their training run (``params.train_run_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ddpmlab.config import REPLICATE_SEEDS, Params, config_params
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.evaluation import metric_registry, multiplicity
from ddpmlab.reporting import planning, replicates
from ddpmlab.reporting.document import Document, Emphasis, Estimate, Tied

STAGE_TAG = "tags.ddpmlab.stage"
CONFIG_TAG = "tags.ddpmlab.config_id"  # pipeline.tracking.CONFIG_TAG
REPLICATE_TAG = "tags.ddpmlab.replicate"  # pipeline.tracking.REPLICATE_TAG
# The params that make a config (config.config_params), as MLflow columns.
CONFIG_COLUMNS = [f"params.{k}" for k in config_params(Params())]
# What makes two evaluations different rows: the model, and how it was sampled.
SAMPLING_KEYS = ["params.train_run_id", "params.sampler", "params.spacing", "params.sampler.variance", "params.sampler.eta", "params.guidance", "params.sample_steps"]
# A line in the figures: one model sampled one way, over step counts.
LINE_KEYS = ["label", "params.sampler", "params.spacing", "params.sampler.variance", "params.sampler.eta", "params.guidance"]
# Training params that never tell two models apart in a plot label.
NOT_A_DIFFERENCE = {"params.device", "params.device_resolved", "params.num_parameters", "params.tracking.experiment"}
# The protocol: runs measured under different ones are not comparable.
PROTOCOL_KEYS = {"params.evaluate.feature_extractor": "feature extractor", "params.num_generated": "generated images"}
# How a run executed (nn.execution.ExecutionRecord.tags): runs that differ here differ in more than their params.
EXECUTION_TAG_PREFIX = "tags.ddpmlab.execution."
NOT_AN_EXECUTION_DIFFERENCE = ("chosen_by",)  # a probe now or the cache of an earlier one: the same choice
# Figures draw at most this many models (lowest FID first): more lines or grid rows are unreadable.
# The table always lists every row.
MAX_PLOTTED_MODELS = 10


@dataclass(frozen=True)
class Column:
    header: str
    source: str  # a column of the evaluation rows
    better: str | None = None  # "min" | "max": the best value is marked
    optional: bool = False  # left out of the table when no row has a value (e.g. no conditional model selected)


RUN_COLUMNS = [
    Column("run", "tags.mlflow.runName"),
    Column("schedule", "params.schedule"),
    Column("T", "params.T"),
    Column("objective", "params.objective"),
    Column("sampler", "params.sampler"),
    Column("spacing", "params.spacing"),
    Column("steps", "steps"),
    Column("NFE", "nfe"),
    Column("w", "params.guidance", optional=True),  # classifier-free guidance weight (conditional models only)
]
# Every score the registry puts in a table, against the test split, with its direction; then the model's cost.
COLUMNS = (
    RUN_COLUMNS
    + [Column(m.label, f"metrics.{m.name}", m.better, optional=m.conditional) for m in metric_registry.METRICS if m.in_table and m.name != "seconds_per_sample"]
    + [
        Column("NLL (bits/dim)", "metrics.nll_bits_per_dim", "min"),
        Column("train steps", "params.train.steps"),
        Column("train time (min)", "train_minutes"),
        Column("s / sample", "metrics.seconds_per_sample", "min"),
    ]
)


class NothingToCompare(ValueError):
    """The selection holds no evaluation runs."""


@dataclass
class Selection:
    """evaluations: one row per (training run, sampler, variance, eta, steps), the newest if
    evaluated more than once, with ``steps`` (int), ``label`` (what tells its training run
    apart from the others) and ``train_minutes``. trainings: the training runs they came from."""

    evaluations: pd.DataFrame
    trainings: pd.DataFrame

    def best_models(self, limit: int = MAX_PLOTTED_MODELS) -> Selection:
        """The same selection restricted to the ``limit`` configs with the lowest mean FID (all if fewer),
        every replicate of each: keeping the best seeds of a config would bias its mean and interval."""
        best = self.evaluations.groupby("config")["metrics.fid"].mean().sort_values(kind="stable").index[:limit]
        evaluations = self.evaluations[self.evaluations["config"].isin(best)].reset_index(drop=True)
        return Selection(evaluations, self.trainings[self.trainings["run_id"].isin(evaluations["params.train_run_id"])])

    @property
    def curves(self) -> list[tuple[str, pd.DataFrame]]:
        """(line label, its rows sorted by NFE) per config and way of sampling (sampler, spacing, options, w);
        a config's replicates share a line (several rows per NFE)."""
        ways = self.evaluations[LINE_KEYS[1:]].astype(str).drop_duplicates().shape[0]
        spacings = self.evaluations["params.spacing"].nunique()
        options = [k for k in self.evaluations if k.startswith("params.sampler.") and self.evaluations[k].astype(str).nunique() > 1]
        out = []
        for _, rows in self.evaluations.groupby(["config_label", *LINE_KEYS[1:]], sort=True, dropna=False):
            first = rows.iloc[0]
            label = first["config_label"]
            if ways > 1:
                label = f"{label}, {first['params.sampler']}" + (f" ({first['params.spacing']})" if spacings > 1 else "")
                # the sampler's own options where they differ between runs: "ddim eta=1.0", "ddpm variance=fixed_small"
                label += "".join(f" {k.removeprefix('params.sampler.')}={first[k]}" for k in options if isinstance(first[k], str))
            if first["params.guidance"]:
                label = f"{label}, w={first['params.guidance']}"
            out.append((label, rows.sort_values("nfe")))
        return out


def select(runs: pd.DataFrame) -> Selection:
    """Split a search result into evaluations and trainings, keep the newest evaluation per row key."""
    if runs.empty or STAGE_TAG not in runs:
        raise NothingToCompare("no ddpmlab runs in the selection")
    evaluations = runs[runs[STAGE_TAG] == "evaluate"].copy()
    if evaluations.empty:
        raise NothingToCompare("no evaluation runs in the selection: run the pipeline (dvc repro) or widen --filter / --runs")
    for key in SAMPLING_KEYS:
        if key not in evaluations:
            evaluations[key] = None
    evaluations["params.guidance"] = evaluations["params.guidance"].fillna("")  # "" = unconditional
    evaluations["steps"] = pd.to_numeric(evaluations["params.sample_steps"]).astype(int)
    evaluations["nfe"] = pd.to_numeric(evaluations["params.nfe"]).astype(int) if "params.nfe" in evaluations else evaluations["steps"]
    evaluations["params.spacing"] = evaluations["params.spacing"].fillna("uniform")  # runs from before step grids existed
    # Runs logged before config ids existed count as configs of their own training run.
    config = evaluations[CONFIG_TAG] if CONFIG_TAG in evaluations else [None] * len(evaluations)
    evaluations["config"] = [c if isinstance(c, str) else run for c, run in zip(config, evaluations["params.train_run_id"])]
    seeds = evaluations[REPLICATE_TAG] if REPLICATE_TAG in evaluations else [None] * len(evaluations)
    evaluations["replicate_key"] = [r if isinstance(r, str) else run for r, run in zip(seeds, evaluations["params.train_run_id"])]
    # The newest evaluation per (config, replicate seeds, way of sampling): a re-evaluation replaces the old one, and a
    # model retrained with the same config and seeds (after a code change, say) replaces its twin instead of posing as
    # another replicate. Configs that share a training run (DVC reuses it when only sample.* changes) stay apart.
    evaluations = evaluations.sort_values("start_time").drop_duplicates([*SAMPLING_KEYS[1:], "config", "replicate_key"], keep="last")
    trainings = runs[(runs[STAGE_TAG] == "train") & runs["run_id"].isin(evaluations["params.train_run_id"])].copy()
    minutes = trainings.set_index("run_id").get("metrics.train_seconds", pd.Series(dtype=float)) / 60
    evaluations["train_minutes"] = evaluations["params.train_run_id"].map(minutes)
    evaluations["label"] = evaluations["params.train_run_id"].map(training_labels(evaluations))
    evaluations["replicate"] = replicate_labels(evaluations)
    evaluations["config_label"] = evaluations["config"].map(config_labels(evaluations))
    order = ["label", "params.sampler", "params.spacing", "steps"]
    return Selection(evaluations.sort_values(order, ascending=[True, True, True, False]).reset_index(drop=True), trainings)


def training_labels(evaluations: pd.DataFrame) -> dict[str, str]:
    """Per training run: the training params that differ between the selected runs, e.g.
    ``cosine`` when only the schedule varies, ``cosine, T=1000`` when T does too."""
    per_run = evaluations.drop_duplicates("params.train_run_id").set_index("params.train_run_id")
    training = [c for c in per_run.columns if c.startswith("params.") and _is_training_param(c)]
    varying = [c for c in training if per_run[c].astype(str).nunique() > 1]
    labels = {}
    for run_id, row in per_run.iterrows():
        parts = [str(row["params.schedule"])] if "params.schedule" in per_run else []
        parts += [f"{c.removeprefix('params.')}={row[c]}" for c in varying if c != "params.schedule"]
        labels[run_id] = ", ".join(parts) or run_id[:8]
    counts = pd.Series(list(labels.values())).value_counts()
    # Same training params, different runs (e.g. retrained on other data): told apart by run id.
    return {run_id: f"{label} ({run_id[:6]})" if counts[label] > 1 else label for run_id, label in labels.items()}


def replicate_labels(evaluations: pd.DataFrame) -> list[str]:
    """Each evaluation's replicate seeds for the tables: train.seed, and "/sample.seed" where that varies too."""
    missing = [None] * len(evaluations)
    train = evaluations.get("params.train.seed", missing)
    sample = evaluations.get("params.sample.seed", missing)
    both = pd.Series(sample).dropna().nunique() > 1
    return [f"{t if isinstance(t, str) else '?'}" + (f"/{s}" if both else "") for t, s in zip(train, sample)]


def config_labels(evaluations: pd.DataFrame) -> dict[str, str]:
    """Per config: the config params that differ between the selected configs (never a replicate
    seed), e.g. ``cosine`` or ``sigmoid, T=1000``; the id's first digits where nothing logged differs."""
    per_config = evaluations.drop_duplicates("config").set_index("config")
    seeds = {f"params.{k}" for k in REPLICATE_SEEDS}
    columns = [c for c in CONFIG_COLUMNS if c in per_config and c not in seeds]
    varying = [c for c in columns if per_config[c].astype(str).nunique() > 1]
    labels = {}
    for config, row in per_config.iterrows():
        parts = [str(row["params.schedule"])] if "params.schedule" in per_config else []
        parts += [f"{c.removeprefix('params.')}={row[c]}" for c in varying if c != "params.schedule"]
        labels[config] = ", ".join(parts) or str(config)[:8]
    counts = pd.Series(list(labels.values())).value_counts()
    return {config: f"{label} ({str(config)[:6]})" if counts[label] > 1 else label for config, label in labels.items()}


def config_param_values(selection: Selection) -> dict[str, dict[str, str]]:
    """config -> {param: value as logged} over CONFIG_COLUMNS (replicate seeds excluded by construction)."""
    per_config = selection.evaluations.drop_duplicates("config").set_index("config")
    columns = [c for c in CONFIG_COLUMNS if c in per_config]
    return {config: {c.removeprefix("params."): str(row[c]) for c in columns if not _missing(row[c])} for config, row in per_config.iterrows()}


def _is_training_param(column: str) -> bool:
    """Params logged from the training config (top level, model.*, train.*, data.*), not sampling or evaluation."""
    name = column.removeprefix("params.")
    top_level = {"schedule", "T", "objective", "seed"}
    return column not in NOT_A_DIFFERENCE and (name in top_level or name.startswith(("model.", "train.", "data.")))


def protocol_notes(selection: Selection) -> tuple[str, bool]:
    """(a sentence describing the evaluation protocol, whether every row shares it)."""
    evaluations = selection.evaluations
    parts, shared = [], True
    for key, name in PROTOCOL_KEYS.items():
        values = sorted(evaluations[key].dropna().astype(str).unique()) if key in evaluations else []
        shared &= len(values) <= 1
        parts.append(f"{name}: {', '.join(values) or 'unknown'}")
    return "; ".join(parts), shared


def execution_differences(selection: Selection) -> list[str]:
    """How the selected evaluations differ in the way they ran (precision, memory format, compile, threads, device,
    processor, torch), one line per differing field: 'train precision: bf16 (3 models), fp32 (1 model)'. Empty: alike."""
    evaluations, lines = selection.evaluations, []
    for column in sorted(c for c in evaluations if c.startswith(EXECUTION_TAG_PREFIX)):
        task, _, name = column.removeprefix(EXECUTION_TAG_PREFIX).partition(".")
        if name in NOT_AN_EXECUTION_DIFFERENCE:
            continue
        rows, unit = (evaluations.drop_duplicates("params.train_run_id"), "model") if task == "train" else (evaluations, "evaluation")
        counts = rows[column].fillna("not recorded").astype(str).value_counts()
        if len(counts) > 1:
            values = ", ".join(f"{value} ({n} {unit}{'s' if n > 1 else ''})" for value, n in sorted(counts.items()))
            lines.append(f"{task} {name}: {values}")
    return lines


def table(selection: Selection) -> tuple[list[str], list[list[object]]]:
    """Header and rows of the table of every evaluation: each score with its run's 95% interval
    (sampling noise only). Nothing is marked best here: one run per config says nothing
    about the training seed; :func:`pooled_table` marks what replicates support."""
    evaluations = selection.evaluations
    values = {c.header: evaluations[c.source] if c.source in evaluations else pd.Series([None] * len(evaluations)) for c in COLUMNS}
    columns = [c for c in COLUMNS if not (c.optional and all(_missing(v) or v == "" for v in values[c.header]))]
    header = [c.header for c in columns]
    rows = []
    for i in range(len(evaluations)):
        row = []
        for c in columns:
            value = values[c.header].iloc[i]
            if _missing(value):
                value = None
            elif c.better and c.source.startswith("metrics."):
                value = Estimate.of(evaluations.iloc[i], c.source)
            row.append(value)
        rows.append(row)
    return header, rows


# Timings: a mean is shown, but no interval or mark; they depend on the machine, not only the config.
NOT_RANKED = {"metrics.seconds_per_sample"}
POOLED_START = ["config", "train seeds", "replicates", "sampler", "spacing", "steps", "NFE"]


def pooled_table(selection: Selection, correction: str = multiplicity.DEFAULT) -> tuple[list[str], list[list[object]]]:
    """One row per (config, sampler, spacing, options, w, steps): each score's mean over replicates
    with its t interval (one replicate: the run's own interval). Bold: detectably better than
    every other config at this way of sampling; italics: the group tied with the best
    (:func:`replicates.marks`, each score's comparisons one family under ``correction``)."""
    scored = [c for c in COLUMNS if c.better and c.source.startswith("metrics.") and c.source in selection.evaluations]
    pooled = replicates.pooled_rows(selection.evaluations, [c.source for c in scored])
    conditional = pooled["params.guidance"].astype(str).ne("").any()
    header = POOLED_START + (["w"] if conditional else []) + [c.header for c in scored]
    marked = {c.source: replicates.marks(pooled, c.source, c.better, correction) if c.source not in NOT_RANKED else {} for c in scored}
    rows = []
    for i, row in pooled.sort_values(["params.sampler", "params.spacing", "steps", "config_label"], ascending=[True, True, False, True]).iterrows():
        cells = [row["config_label"], row["seeds"], row["replicates"], row["params.sampler"], row["params.spacing"], row["steps"], row["nfe"]]
        cells += [row["params.guidance"]] if conditional else []
        for c in scored:
            p = row[c.source]
            estimate = None
            if isinstance(p, replicates.Pooled) and p.n:
                estimate = Estimate(p.mean) if c.source in NOT_RANKED else Estimate(p.mean, p.low, p.high)
            mark = marked[c.source].get(i)
            cells.append(Emphasis(estimate) if mark == "best" else Tied(estimate) if mark == "tied" else estimate)
        rows.append(cells)
    return header, rows


def differences_table(selection: Selection, column: str = "metrics.fid", better: str = "min", correction: str = multiplicity.DEFAULT,
                      ) -> tuple[list[str], list[list[object]]]:  # fmt: skip
    """Pairs of configs that differ in one param, at every way of sampling both have: FID of B against
    A over replicates (the ratio B / A on log FID, paired by seed where possible) with its 95%
    interval, the p-value adjusted across the table, and the verdict for B. Among the
    MAX_PLOTTED_MODELS configs with the lowest mean FID: a sweep of hundreds would give tens of thousands of pairs."""
    scored = [column] if column in selection.evaluations else []
    evaluations = selection.evaluations
    best = evaluations.groupby("config")[column].mean().sort_values(kind="stable").index[:MAX_PLOTTED_MODELS] if scored else []
    pooled = replicates.pooled_rows(evaluations[evaluations["config"].isin(best)], scored)
    labels = selection.evaluations.drop_duplicates("config").set_index("config")["config_label"]
    found = replicates.config_differences(pooled, config_param_values(selection), column, better, correction) if scored else []
    header = ["change", "A", "B", "sampler", "spacing", "steps", "FID A", "FID B", "B vs A [95% CI]", "test", "p adjusted", "seeds for 80%", "B is"]
    rows = []
    for d in found:
        way, c = d["sampling"], d["contrast"]
        change = c.text() if c and np.isfinite(c.low) else f"{d['mean_b'] - d['mean_a']:+.4g}"
        test = "" if c is None else f"paired, {c.pairs} seeds" if c.design == "paired" else "Welch"
        q = f"{d['q']:.3g}" if np.isfinite(d["q"]) else ""
        rows.append([f"{d['param']}: {d['value_a']} -> {d['value_b']}", labels[d["a"]], labels[d["b"]], way["params.sampler"], way["params.spacing"],
                     way["steps"], d["mean_a"], d["mean_b"], change, test, q, _seeds_text(d), d["verdict"]])  # fmt: skip
    return header, rows


def _seeds_text(d: dict) -> str:
    """For an unresolved comparison, the seeds per config a new study needs to find the observed effect 80% of the time."""
    c = d["contrast"]
    if c is None or d["verdict"] in ("better", "worse") or not np.isfinite(c.p_value):
        return ""
    seeds = c.seeds_for_power()
    return f"> {planning.MAX_SEEDS}" if seeds is None else str(seeds)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# -- what the figures draw (the drawing: reporting/figures/compare.py) ------------------------------


def schedule_processes(selection: Selection) -> dict[str, DiffusionProcess]:
    """label 'schedule, T=..' -> its forward process, for every (schedule, T) in the selection."""
    pairs = selection.evaluations[["params.schedule", "params.T"]].drop_duplicates().sort_values(["params.schedule", "params.T"])
    return {f"{s}, T={t}": DiffusionProcess.from_schedule(s, int(t)) for s, t in pairs.itertuples(index=False)}


def grid_choices(selection: Selection, max_steps: int = 4) -> list[tuple[str, int, str]]:
    """(label, steps, evaluation run id) of the sample grids worth showing: the step counts most
    models share (at most ``max_steps``), for every model of the selection."""
    chosen = selection.evaluations
    common = chosen.groupby("steps")["label"].nunique().sort_values(ascending=False, kind="stable")
    steps = sorted(common.index[:max_steps], reverse=True)
    rows = chosen[chosen["steps"].isin(steps)].drop_duplicates(["label", "steps"])
    return [(r["label"], int(r["steps"]), r["run_id"]) for _, r in rows.iterrows()]


def document(selection: Selection, figures: dict[str, str], source: str, plotted_models: int | None = None,
             correction: str = multiplicity.DEFAULT) -> Document:  # fmt: skip
    """The comparison report; figures: name -> path relative to the document's folder, drawn
    for ``plotted_models`` of the selection's models (None: all); ``correction``: how each table
    of verdicts is corrected for its number of comparisons (:mod:`ddpmlab.evaluation.multiplicity`)."""
    doc = Document("ddpmlab: experiments compared")
    protocol, shared = protocol_notes(selection)
    evaluations = selection.evaluations
    models, configs = evaluations["label"].nunique(), evaluations["config"].nunique()
    per_config = evaluations.drop_duplicates("params.train_run_id").groupby("config").size()
    doc.paragraph(
        f"{len(evaluations)} evaluations of {models} trained models from {source}: {configs} configs "
        f"(runs that differ only in train.seed / sample.seed share a config), with {_replicate_counts(per_config)}."
    )
    if plotted_models is not None and plotted_models < models:
        doc.paragraph(f"The figures show the {plotted_models} models with the lowest FID; the tables list all {models}.")
    doc.paragraph(
        f"Evaluation protocol: {protocol}."
        + ("" if shared else " WARNING: the rows were measured under different protocols; their FID / IS / KID are not comparable.")
        + " FID, KID, precision and recall are against the test split; FID at small N is biased upward, so compare rows only at the same N."
    )
    differences = execution_differences(selection)
    if differences:
        doc.paragraph(
            "WARNING: the models differ in how they ran, not only in their params (bf16 and fp32, or another thread count, "
            "round differently, so such runs are not replicates of one computation): " + "; ".join(differences) + "."
        )
    doc.heading("Configs over training seeds")
    single = int((per_config < 2).sum())
    header, rows = pooled_table(selection, correction)
    doc.paragraph(
        "One row per config and way of sampling: the mean over replicates with a 95% Student-t interval. Bold: detectably better than "
        "every other config; italics: the group that cannot be told apart from the best; unmarked where nothing can be said. "
        "Each best-vs-other comparison is a t test over replicates on the log scale for positive scores, paired by seed where both "
        f"configs ran the same seeds, else Welch's; each score's comparisons are one family under {multiplicity.METHODS[correction]} "
        f"at {multiplicity.ALPHA:.0%} (`ddpmlab.reporting.replicates`)."
        + (f" {single} config{'s have' if single > 1 else ' has'} a single replicate: such a row shows its run's own interval, which "
           "covers sampling noise but not the training seed, and no value in a block with such a config is marked. Queue replicates "
           "with `dvc exp run --queue -S train.seed=0,1,2`." if single else "")
    )  # fmt: skip
    doc.table(header, rows)
    _differences_section(doc, selection, configs, correction)
    doc.heading("Every evaluation")
    doc.paragraph("Each score with its run's 95% interval over images (sampling noise of that one trained model).")
    header, rows = table(selection)
    doc.table(header, rows)
    captions = {
        "fid": "FID against network evaluations per image (NFE) and against sampling time per image (each point labelled with its NFE).",
        "loss": "Training loss of each model.",
        "schedules": "alpha-bar and SNR of each schedule against the fraction of the process t / T.",
        "forward": "The same image and noise under each schedule's forward process.",
        "grids": "Sample grids at matched step counts (same seeds across rows).",
    }
    for name, caption in captions.items():
        if name in figures:
            doc.image(figures[name], caption)
    return doc


def _differences_section(doc: Document, selection: Selection, configs: int, correction: str) -> None:
    """The configs that differ in one param, and whether each change is real; configs: how many the selection holds."""
    doc.heading("Which config differences are real")
    header, rows = differences_table(selection, correction=correction)
    if rows:
        real = sum(r[-1] in ("better", "worse") for r in rows)
        tested = sum(r[header.index("p adjusted")] != "" for r in rows)
        limited = configs > MAX_PLOTTED_MODELS
        doc.paragraph(
            "Every pair of configs whose params differ in exactly one key"
            + (f" (between the {MAX_PLOTTED_MODELS} configs with the lowest mean FID)" if limited else "")
            + ", at each way of sampling both were evaluated with: FID of B against A over replicates, as the ratio of geometric "
            "means B / A with its 95% interval (a t test on log FID, paired by seed where both configs ran two or more of the same "
            f"seeds, else Welch's). The table is one family: {multiplicity.describe(correction, tested)}; a change is real when its "
            f"adjusted p-value is at most {multiplicity.ALPHA:.0%}. {real} of {len(rows)} changes are real at this many replicates; "
            "the rest cannot be told from seed-to-seed variation (a ratio interval can exclude 1 and still not survive the correction). "
            "For each of those, *seeds for 80%* is how many seeds per config a new study would need to find the effect seen here 80% "
            "of the time at 5% (`ddpmlab.reporting.planning`: noncentral t, the spread seen here, paired where this test was; "
            "a correction across a table needs more)."
        )
        doc.table(header, rows)
    else:
        doc.paragraph("No two configs in the selection differ in exactly one param.")


def _replicate_counts(per_config: pd.Series) -> str:
    """"3 replicates each" or "1 to 3 replicates per config"."""
    low, high = int(per_config.min()), int(per_config.max())
    return f"{low} replicate{'s' if low > 1 else ''} each" if low == high else f"{low} to {high} replicates per config"


def first_image(data_dir: Path | None) -> np.ndarray:
    """(C, H, W) uint8: the first test image of the prepared data if there, else the first bundled digit at 16x16."""
    if data_dir is not None and (data_dir / "test.npz").is_file():
        with np.load(data_dir / "test.npz") as f:
            return f["images"][0]
    from ddpmlab.data.sources import load_digits

    return load_digits(16, 1).train.images[0]


def loss_histories(selection: Selection, fetch) -> dict[str, pd.DataFrame]:
    """label -> (step, value) of the training loss; fetch(run_ids, key) -> {run_id: DataFrame}."""
    labels = selection.evaluations.drop_duplicates("params.train_run_id").set_index("params.train_run_id")["label"]
    fetched = fetch(list(selection.trainings["run_id"]), "loss")
    return {labels[run_id]: history for run_id, history in fetched.items() if run_id in labels and not history.empty}

