"""Replicates over training seeds: a mean and interval per config, and which config differences are real.

Runs that differ only in their replicate seeds (``config.REPLICATE_SEEDS``: train.seed,
sample.seed) share a config id (``config.config_id``, the MLflow tag ``ddpmlab.config_id``).
Their evaluations are pooled per (config, sampler, spacing, options, w, steps): the mean over
replicates with a Student-t interval, and differences between configs with Welch's t interval.

Why Welch's t and not a bootstrap over replicates: with 2 to 5 replicates a bootstrap has at
most 126 distinct resamples (10 at 3 replicates), and its percentile intervals are far too
narrow at that size. The t interval widens as replicates get fewer (t_0.975 = 12.7 at one
degree of freedom, 2.8 at four; Welch's degrees of freedom with 2 + 2 replicates lie between 1
and 2), and Welch's degrees of freedom allow each config its own seed-to-seed variance. It assumes the per-replicate scores are roughly normal; tests/test_replicates.py
measures its false-positive rate and power on simulated replicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
# Params that change the evaluation protocol itself (the reference split, N, the features): a difference in
# one of them changes what FID measures, so configs that differ there are not ranked against each other.
PROTOCOL_PARAMS = ("seed", "sample.num_samples", "evaluate.", "classifier.")
PROTOCOL_COLUMNS = ["params.seed", "params.num_generated", "params.evaluate.feature_extractor"]
# What makes one pooled row: the config and how it was sampled (compare.LINE_KEYS without the model's label).
GROUP_KEYS = ["config", "params.sampler", "params.spacing", "params.sampler.variance", "params.sampler.eta", "params.guidance", "steps"]
SAMPLING_KEYS = GROUP_KEYS[1:]


@dataclass(frozen=True)
class Pooled:
    """Replicate values of one score: mean and interval (t over replicates; with one replicate the
    run's own bootstrap interval, which covers sampling noise only)."""

    values: tuple[float, ...]
    low: float | None
    high: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


def pool(values: list[float], single_interval: tuple[float, float] | None = None, level: float = LEVEL) -> Pooled:
    """Mean with a t interval over ``values`` (replicates); one value keeps ``single_interval``."""
    values = tuple(float(v) for v in values if not np.isnan(float(v)))
    if len(values) >= 2:
        half = stats.t.ppf((1 + level) / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
        return Pooled(values, float(np.mean(values) - half), float(np.mean(values) + half))
    low, high = single_interval or (None, None)
    return Pooled(values, low, high)


@dataclass(frozen=True)
class Welch:
    """b - a over replicates: the difference of means, its interval and Welch's degrees of freedom."""

    difference: float
    low: float
    high: float
    df: float

    @property
    def detected(self) -> bool:
        """The interval excludes 0; never for an interval that could not be computed (NaN)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and not (self.low <= 0 <= self.high))


def welch(a: tuple[float, ...], b: tuple[float, ...], level: float = LEVEL) -> Welch | None:
    """Welch's t interval for mean(b) - mean(a); None with fewer than 2 replicates on either side."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(b) - np.mean(a))
    se = np.sqrt(va + vb)
    if se == 0:  # identical replicates on both sides (a quantised score): no spread to judge the gap against
        return Welch(diff, float("nan"), float("nan"), float("nan"))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf((1 + level) / 2, df) * se
    return Welch(diff, float(diff - half), float(diff + half), float(df))


def verdict(w: Welch | None, better: str, replicates: tuple[int, int]) -> str:
    """"better" / "worse" (B against A) / "no detectable difference at 3 + 3 replicates" / "needs >= 2 replicates per config"."""
    if w is None:
        return f"no verdict: needs >= 2 replicates per config (has {replicates[0]} + {replicates[1]})"
    if not np.isfinite(w.low):
        return "no verdict: every replicate scored the same"
    if not w.detected:
        return f"no detectable difference at {replicates[0]} + {replicates[1]} replicates"
    lower_is_better = better == "min"
    return "better" if (w.difference < 0) == lower_is_better else "worse"


def pooled_rows(evaluations: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per GROUP_KEYS: the group's first evaluation's fields, ``replicates`` and, per score
    column c (a "metrics.<name>" column), a :class:`Pooled` in column c."""
    out = []
    for _, rows in evaluations.groupby(GROUP_KEYS, sort=False, dropna=False):
        row = rows.iloc[0].to_dict()
        row["replicates"] = len(rows)
        row["seeds"] = ", ".join(sorted(rows["replicate"].astype(str)))
        for c in columns:
            if c not in rows:
                continue
            single = None
            if len(rows) == 1 and f"{c}_ci_low" in rows and rows[f"{c}_ci_low"].notna().all():
                single = (float(rows[f"{c}_ci_low"].iloc[0]), float(rows[f"{c}_ci_high"].iloc[0]))
            row[c] = pool(pd.to_numeric(rows[c], errors="coerce").tolist(), single)
        out.append(row)
    return pd.DataFrame(out)


def marks(pooled: pd.DataFrame, column: str, better: str) -> dict[int, str]:
    """Row index -> "best" (detectably better than every other config) or "tied" (the group not told apart
    from the best), within each (sampler, spacing, options, w, steps) across configs. Nothing is marked
    where a config has a single replicate: its seed-to-seed spread is unknown."""
    out = {}
    blocks = SAMPLING_KEYS + [k for k in PROTOCOL_COLUMNS if k in pooled]  # never rank across evaluation protocols
    for _, block in pooled.groupby(blocks, sort=False, dropna=False):
        cells = [(i, p) for i, p in block[column].items() if isinstance(p, Pooled) and p.n]
        if len(cells) < 2 or any(p.n < 2 for _, p in cells):
            continue
        ordered = sorted(cells, key=lambda c: c[1].mean, reverse=better == "max")
        best_index, best = ordered[0]
        tied = [i for i, p in ordered if not welch(best.values, p.values).detected]  # includes the best itself
        if tied == [best_index]:  # detectably better than every other config, not only the runner-up
            out[best_index] = "best"
        else:
            out.update({i: "tied" for i in tied})
    return out


def config_differences(pooled: pd.DataFrame, config_params: dict[str, dict[str, str]], column: str, better: str) -> list[dict]:
    """For each pair of configs whose params differ in exactly one key, at every shared way of sampling:
    the difference of ``column`` (b - a) over replicates with Welch's interval and a verdict.
    config_params: config -> {param: value} (the config's params, as logged)."""
    configs = sorted(set(config_params) & set(pooled["config"]))
    ways = {config: _by_way(rows) for config, rows in pooled.groupby("config")}
    out = []
    for i, a in enumerate(configs):
        for b in configs[i + 1 :]:
            keys = set(config_params[a]) | set(config_params[b])
            differing = [k for k in sorted(keys) if config_params[a].get(k) != config_params[b].get(k)]
            if len(differing) != 1:
                continue
            key = differing[0]
            protocol = key == "seed" or key.startswith(PROTOCOL_PARAMS[1:])
            ways_a, ways_b = ways[a], ways[b]
            for way in (w for w in ways_a if w in ways_b):
                pa, pb = ways_a[way][column], ways_b[way][column]
                w = None if protocol else welch(pa.values, pb.values)
                out.append({
                    "param": key, "a": a, "b": b, "value_a": config_params[a].get(key), "value_b": config_params[b].get(key),
                    "sampling": dict(zip(SAMPLING_KEYS, way)), "mean_a": pa.mean, "mean_b": pb.mean, "welch": w,
                    "verdict": "not compared: a change of the evaluation protocol" if protocol else verdict(w, better, (pa.n, pb.n)),
                })  # fmt: skip
    return out


def _by_way(rows: pd.DataFrame) -> dict[tuple[str, ...], pd.Series]:
    """A config's pooled rows keyed by how they were sampled (as strings: NaN options compare equal)."""
    return {tuple(str(row[k]) for k in SAMPLING_KEYS): row for _, row in rows.iterrows()}
