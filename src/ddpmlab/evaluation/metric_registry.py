"""Every score a run gets, named once: the CSVs, metrics.json, MLflow, the report's tables and
``ddpmlab compare``'s columns are all built from :data:`METRICS`.

A metric with ``per_split`` is measured against both references (``evaluation.protocol.SPLITS``): the
bare name against the test split, ``<name>_train`` against the training split. A metric with
``interval`` also has ``<column>_ci_low`` / ``<column>_ci_high``: its 95% interval
(:mod:`ddpmlab.evaluation.resampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLIT_SUFFIXES = ("", "_train")  # evaluation.protocol.SPLITS = ("test", "train")
INTERVAL_ENDS = ("_ci_low", "_ci_high")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # for tables
    better: str | None = None  # "min" | "max": which way is better (the best value is marked); None: not a score
    # (nn_ratio: ~1 is held-out-like, lower is copying, higher is off the data; neither end is "better")
    per_split: bool = False  # also <name>_train
    headline: tuple[str, ...] = ()  # split suffixes in metrics.json (the headline run's values) and on the MLflow training run
    conditional: bool = False  # only for class-conditional models
    in_table: bool = True  # a column of `ddpmlab compare`
    interval: bool = False  # has an interval (<column>_ci_low, <column>_ci_high)
    bounds: tuple[float | None, float | None] = (None, None)  # the valid range: every interval is cut to it

    @property
    def columns(self) -> list[str]:
        return [self.name + s for s in SPLIT_SUFFIXES] if self.per_split else [self.name]

    @property
    def interval_columns(self) -> list[str]:
        return [f"{c}{end}" for c in self.columns for end in INTERVAL_ENDS] if self.interval else []

    @property
    def headline_columns(self) -> list[str]:
        return [self.name + s for s in self.headline]


NON_NEGATIVE, RATE = (0.0, None), (0.0, 1.0)
METRICS = (
    Metric("fid", "FID", "min", per_split=True, headline=("", "_train"), interval=True, bounds=NON_NEGATIVE),
    # FID with its 1 / N bias removed (resampling.Jackknife.bias_corrected), an estimate of the distance at
    # infinite N. It falls below 0 when the two sets nearly coincide; docs/comparing.md#fid-at-infinite-n.
    Metric("fid_inf", "FID at infinite N (bias-corrected)", "min", per_split=True, in_table=False, interval=True),
    Metric("fid_ratio", "FID / real floor", "min", interval=True, bounds=NON_NEGATIVE),
    Metric("is_mean", "IS", "max", headline=("",), interval=True, bounds=(1.0, None)),  # exp(E KL(p(y|x) || p(y))) >= 1
    Metric("is_std", "IS std over splits", in_table=False),
    Metric("is_ratio", "IS / real floor", "max", in_table=False, interval=True, bounds=NON_NEGATIVE),
    # KID's unbiased estimate can fall below 0; the squared MMD it estimates cannot.
    Metric("kid_mean", "KID", "min", per_split=True, headline=("",), interval=True, bounds=NON_NEGATIVE),
    Metric("kid_std", "KID std over subsets", per_split=True, in_table=False),
    Metric("precision", "precision", "max", per_split=True, headline=("",), interval=True, bounds=RATE),
    Metric("recall", "recall", "max", per_split=True, headline=("",), interval=True, bounds=RATE),
    Metric("copy_rate", "copy rate (features)", "min", headline=("",), interval=True, bounds=RATE),
    Metric("nn_ratio", "nearest-training distance / test's (features)", in_table=False),
    Metric("copy_rate_pixels", "copy rate (pixels)", "min", headline=("",), in_table=False, interval=True, bounds=RATE),
    Metric("nn_ratio_pixels", "nearest-training distance / test's (pixels)", in_table=False),
    Metric("cond_accuracy", "class accuracy", "max", headline=("",), conditional=True, interval=True, bounds=RATE),
    Metric("per_class_fid", "per-class FID", "min", conditional=True, in_table=False),
    Metric("endpoint_error", "endpoint error (RMS vs many-step)", "min", interval=True, bounds=NON_NEGATIVE),  # deterministic runs
    # Not in the headline: a timing differs between any two runs, so `dvc exp show --only-changed` would always show it.
    Metric("seconds_per_sample", "s / sample", "min"),
    Metric("images_per_s", "images / s", "max", in_table=False),
)

# What identifies a run in a row (``sampling.plan.Run``), ahead of its scores.
RUN_FIELDS = ("key", "sampler", "spacing", "steps", "nfe", "guidance")
# Real-data floors are reported for the metrics a real image set has (evaluation.Protocol.real_floor).
FLOOR_METRICS = ("fid", "fid_inf", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "copy_rate", "nn_ratio", "copy_rate_pixels", "nn_ratio_pixels")


def bounds(column: str) -> tuple[float | None, float | None]:
    """The valid range of a score column ("fid_train", "metrics.recall", ...); unbounded for a column no metric has."""
    name = column.removeprefix("metrics.")
    for m in METRICS:
        if name in m.columns:
            return m.bounds
    return (None, None)


def row_fields(conditional: bool) -> tuple[str, ...]:
    """Columns of reports/steps.csv: the run, then every metric (both splits) it has, each followed by its interval."""
    fields = []
    for m in METRICS:
        if conditional or not m.conditional:
            for c in m.columns:
                fields += [c, *(f"{c}{end}" for end in INTERVAL_ENDS if m.interval)]
    return RUN_FIELDS + tuple(fields)


def headline(row: dict) -> dict:
    """metrics.json: the headline run's headline metrics, FID with its interval. Short on purpose: `dvc exp show`
    puts every key in a column ahead of the params, so per-run scores live in steps.csv, evaluation.json and MLflow."""
    out = {}
    for m in METRICS:
        for c in m.headline_columns:
            if not m.conditional or row.get(c) is not None:
                out[c] = row.get(c)
            if c == "fid":  # the one interval DVC shows
                out.update({f"fid{end}": row[f"fid{end}"] for end in INTERVAL_ENDS if row.get(f"fid{end}") is not None})
    return out
