"""Replicates over training seeds: a mean and interval per config, and which config differences are real.

Runs that differ only in their replicate seeds (``config.REPLICATE_SEEDS``: train.seed,
sample.seed) share a config id (``config.config_id``, the MLflow tag ``ddpmlab.config_id``).
Their evaluations are pooled per (config, sampler, spacing, options, w, steps): the mean over
replicates with a Student-t interval, cut to the score's valid range.

Two configs are compared with a t test over replicates (:func:`contrast`):

- on the log scale for positive scores (FID, KID, IS, endpoint error): seed-to-seed spreads of
  FID are skewed and grow with FID, and a ratio B / A is what "10% better" means. The effect is
  reported back as that ratio of geometric means, with its interval;
- paired by seed where both configs ran the same replicate seeds (two or more of them): a config
  trained with train.seed = 1 shares its data order and initial weights with the other config's
  seed 1, so their scores move together, and per-seed differences cancel that shared part. Where
  fewer than two seeds are shared, Welch's t on the (log) scores, which lets each config have its
  own spread.

Why t and not a bootstrap over replicates: with 2 to 5 replicates a bootstrap has at most 126
distinct resamples (10 at 3 replicates), and its percentile intervals are far too narrow at that
size. The t interval widens as replicates get fewer (t_0.975 = 12.7 at one degree of freedom).
tests/test_replicates.py measures the false-positive rate (normal and lognormal replicates with
unequal spreads) and the power pairing gains.

A table of such comparisons is one family: p-values are adjusted together
(:mod:`ddpmlab.evaluation.multiplicity`, Benjamini-Hochberg by default) before any is called real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ddpmlab.evaluation import metric_registry, multiplicity
from ddpmlab.evaluation.resampling import Interval
from ddpmlab.reporting import planning

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
    """Replicate values of one score (with the replicate seeds each came from): mean and interval (t over
    replicates; with one replicate the run's own interval, which covers sampling noise only)."""

    values: tuple[float, ...]
    low: float | None
    high: float | None
    seeds: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


def pool(values: list[float], single_interval: tuple[float, float] | None = None, level: float = LEVEL,
         bounds: tuple[float | None, float | None] = (None, None), seeds: list[str] | None = None) -> Pooled:  # fmt: skip
    """Mean with a t interval over ``values`` (replicates), cut to ``bounds``; one value keeps ``single_interval``."""
    kept = [(float(v), str(s)) for v, s in zip(values, seeds or [""] * len(values)) if not np.isnan(float(v))]
    values_kept, seeds_kept = tuple(v for v, _ in kept), tuple(s for _, s in kept)
    if len(values_kept) >= 2:
        half = stats.t.ppf((1 + level) / 2, len(values_kept) - 1) * np.std(values_kept, ddof=1) / np.sqrt(len(values_kept))
        low, high = np.mean(values_kept) - half, np.mean(values_kept) + half
    else:
        low, high = single_interval or (None, None)
    if low is not None and high is not None:
        cut = Interval(float(low), float(high)).clamped(bounds)
        low, high = cut.low, cut.high
    return Pooled(values_kept, low, high, seeds_kept if seeds else ())


@dataclass(frozen=True)
class Contrast:
    """B against A over replicates. On the log scale, ``effect`` is the ratio of geometric means
    B / A (1: no change) with its interval; on the score's own scale, the difference of means B - A
    (0: no change). ``design``: "paired" over ``pairs`` shared seeds, or "welch". ``seed_sd``: one
    config's seed-to-seed sd on the test's scale (paired: the per-seed differences' sd over sqrt 2), what
    :mod:`planning` needs to say how many seeds would resolve the effect."""

    effect: float
    low: float
    high: float
    p_value: float
    df: float
    design: str
    log_scale: bool
    pairs: int = 0
    seed_sd: float = float("nan")

    @property
    def shift(self) -> float:
        """The effect on the test's scale: log ratio, or difference."""
        return float(np.log(self.effect)) if self.log_scale else self.effect

    def seeds_for_power(self) -> int | None:
        """Seeds per config a new study needs to find this effect 80% of the time (per-comparison 5%; :mod:`planning`)."""
        return planning.seeds_needed(self.shift, self.seed_sd, paired=self.design == "paired")

    @property
    def null(self) -> float:
        return 1.0 if self.log_scale else 0.0

    def b_is_better(self, better: str) -> bool:
        return (self.effect < self.null) == (better == "min")

    def text(self) -> str:
        """"x0.912 [0.85, 0.979]" (ratio) or "+0.031 [-0.02, 0.08]" (difference)."""
        if self.log_scale:
            return f"x{self.effect:.3g} [{self.low:.3g}, {self.high:.3g}]"
        return f"{self.effect:+.4g} [{self.low:.4g}, {self.high:.4g}]"


def log_scale_for(column: str, *samples: tuple[float, ...]) -> bool:
    """Compare on the log scale: a score bounded below and not above (FID, KID, IS, ...) whose values are all positive."""
    low, high = metric_registry.bounds(column)
    return low is not None and high is None and all(v > 0 for values in samples for v in values)


def contrast(a: Pooled, b: Pooled, log_scale: bool, level: float = LEVEL) -> Contrast | None:
    """The t test and interval of B against A (see the module doc); None with fewer than 2 replicates on
    either side. Identical replicates on both sides give NaN (no spread to judge the gap against)."""
    if a.n < 2 or b.n < 2:
        return None
    scale = np.log if log_scale else np.asarray
    back = np.exp if log_scale else (lambda x: x)
    by_seed_a, by_seed_b = dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values))
    shared = [s for s in a.seeds if s in by_seed_b and s] if len(by_seed_a) == a.n and len(by_seed_b) == b.n else []
    if len(shared) >= 2:
        d = scale(np.array([by_seed_b[s] for s in shared])) - scale(np.array([by_seed_a[s] for s in shared]))
        centre, se, df, design = float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d))), len(d) - 1.0, "paired"
        seed_sd = float(np.std(d, ddof=1) / np.sqrt(2))
    else:
        la, lb = scale(np.array(a.values)), scale(np.array(b.values))
        va, vb = np.var(la, ddof=1) / len(la), np.var(lb, ddof=1) / len(lb)
        centre, se, design = float(np.mean(lb) - np.mean(la)), float(np.sqrt(va + vb)), "welch"
        df = float((va + vb) ** 2 / (va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1))) if se > 0 else float("nan")
        seed_sd = float(np.sqrt((np.var(la, ddof=1) + np.var(lb, ddof=1)) / 2))
    pairs = len(shared) if design == "paired" else 0
    if not se > 0:
        nan = float("nan")
        return Contrast(float(back(centre)), nan, nan, nan, nan, design, log_scale, pairs, seed_sd)
    half = stats.t.ppf((1 + level) / 2, df) * se
    p = float(2 * stats.t.sf(abs(centre) / se, df))
    return Contrast(float(back(centre)), float(back(centre - half)), float(back(centre + half)), p, float(df), design, log_scale, pairs, seed_sd)


def verdict(c: Contrast | None, q: float, better: str, replicates: tuple[int, int]) -> str:
    """"better" / "worse" (B against A) / "no detectable difference at 3 + 3 replicates" / "no verdict: ..."; q: the
    comparison's p-value adjusted across its table."""
    if c is None:
        return f"no verdict: needs >= 2 replicates per config (has {replicates[0]} + {replicates[1]})"
    if not np.isfinite(c.p_value):
        return "no verdict: every replicate scored the same"
    if not q <= multiplicity.ALPHA:
        return f"no detectable difference at {replicates[0]} + {replicates[1]} replicates"
    return "better" if c.b_is_better(better) else "worse"


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
            seeds = rows["replicate_key"].astype(str).tolist() if "replicate_key" in rows else None
            row[c] = pool(pd.to_numeric(rows[c], errors="coerce").tolist(), single, bounds=metric_registry.bounds(c), seeds=seeds)
        out.append(row)
    return pd.DataFrame(out)


def marks(pooled: pd.DataFrame, column: str, better: str, correction: str = multiplicity.DEFAULT) -> dict[int, str]:
    """Row index -> "best" (detectably better than every other config) or "tied" (the group not told apart
    from the best), within each (sampler, spacing, options, w, steps) across configs. Every best-vs-other
    comparison of the column is one family (``correction``). Nothing is marked where a config has a
    single replicate: its seed-to-seed spread is unknown."""
    blocks = SAMPLING_KEYS + [k for k in PROTOCOL_COLUMNS if k in pooled]  # never rank across evaluation protocols
    ranked = []  # (best index, [(other index, contrast)])
    for _, block in pooled.groupby(blocks, sort=False, dropna=False):
        cells = [(i, p) for i, p in block[column].items() if isinstance(p, Pooled) and p.n]
        if len(cells) < 2 or any(p.n < 2 for _, p in cells):
            continue
        ordered = sorted(cells, key=lambda c: c[1].mean, reverse=better == "max")
        best_index, best = ordered[0]
        log = log_scale_for(column, *(p.values for _, p in cells))
        ranked.append((best_index, [(i, contrast(best, p, log)) for i, p in ordered[1:]]))
    q = iter(multiplicity.adjusted([c.p_value for _, others in ranked for _, c in others], correction))
    out = {}
    for best_index, others in ranked:
        tied = [i for (i, _), qi in zip(others, q) if not qi <= multiplicity.ALPHA]
        if not tied:  # detectably better than every other config, not only the runner-up
            out[best_index] = "best"
        else:
            out.update({i: "tied" for i in [best_index, *tied]})
    return out


def config_differences(pooled: pd.DataFrame, config_params: dict[str, dict[str, str]], column: str, better: str,
                       correction: str = multiplicity.DEFAULT) -> list[dict]:  # fmt: skip
    """For each pair of configs whose params differ in exactly one key, at every shared way of sampling:
    B against A over replicates (:func:`contrast`), its p-value adjusted across the whole list
    (``correction``), and a verdict. config_params: config -> {param: value} (the config's params, as logged)."""
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
                c = None if protocol else contrast(pa, pb, log_scale_for(column, pa.values, pb.values))
                out.append({
                    "param": key, "a": a, "b": b, "value_a": config_params[a].get(key), "value_b": config_params[b].get(key),
                    "sampling": dict(zip(SAMPLING_KEYS, way)), "mean_a": pa.mean, "mean_b": pb.mean, "contrast": c,
                    "protocol": protocol, "replicates": (pa.n, pb.n),
                })  # fmt: skip
    tested = [d for d in out if d["contrast"] is not None and np.isfinite(d["contrast"].p_value)]
    for d, q in zip(tested, multiplicity.adjusted([d["contrast"].p_value for d in tested], correction)):
        d["q"] = float(q)
    for d in out:
        d.setdefault("q", float("nan"))
        d["verdict"] = ("not compared: a change of the evaluation protocol" if d["protocol"]
                        else verdict(d["contrast"], d["q"], better, d["replicates"]))  # fmt: skip
    return out


def _by_way(rows: pd.DataFrame) -> dict[tuple[str, ...], pd.Series]:
    """A config's pooled rows keyed by how they were sampled (as strings: NaN options compare equal)."""
    return {tuple(str(row[k]) for k in SAMPLING_KEYS): row for _, row in rows.iterrows()}
