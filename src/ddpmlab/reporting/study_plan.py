"""What a comparison of two configs will cost, read off a pilot: the runs already in MLflow.

Per way of sampling (sampler, spacing, steps) the pilot gives, on the log-FID scale:

- the spread between replicates of one config (pooled over every config with two or more), which
  holds both the training seed's part and the sampling noise of N images;
- the sampling noise alone, from each run's own interval at N (half-width / 1.96: the jackknife's t quantile on 49
  degrees of freedom is 2.01, so this reads its sd 2.5% high,
  divided by the FID: the delta method on the log scale);
- the cost: training seconds per run and sampling seconds per image, as measured.

The seed's part is the difference of the two variances; the images' share is taken as the
intervals' sampling variance but never more than the replicate spread itself (replicates drawn
with one sample.seed share x_T and the reference, so part of the sampling noise cancels between
them). More images shrink only the images' share: at N' images it is taken as (share) x N / N',
which holds for the generated images and not for the reference split (its size stays), so the
images column is the most more images can buy. The seeds per config for 80% power come from :mod:`planning`, unpaired
(paired by seed needs fewer: run both configs with the same train.seed values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ddpmlab.reporting import planning
from ddpmlab.reporting.compare import Selection

Z95 = 1.959964
UPPER_CONFIDENCE = 0.8
IMAGE_MULTIPLES = (1, 2, 4, 8)


class NoPilot(ValueError):
    """The selection holds no config with two or more replicates: no seed-to-seed spread to plan from."""


@dataclass(frozen=True)
class Target:
    """The difference to resolve: a relative one ("10%": B's FID 10% below A's) or an absolute FID gap."""

    text: str
    relative: float | None = None
    absolute: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
        if not match or float(match.group(1)) <= 0 or (match.group(2) and float(match.group(1)) >= 100):
            raise ValueError(f"--difference {text!r}: give a percentage below 100 (10%) or a positive FID gap (0.5)")
        value = float(match.group(1))
        return cls(text.strip(), relative=value / 100) if match.group(2) else cls(text.strip(), absolute=value)

    def log_effect(self, fid: float) -> float:
        """The difference on the log scale, at a config whose FID is ``fid``."""
        return float(-np.log(1 - self.relative)) if self.relative is not None else float(np.log((fid + self.absolute) / fid))


@dataclass(frozen=True)
class Pilot:
    """One way of sampling in the pilot: spreads on the log-FID scale, the FID, N and the measured costs."""

    way: tuple[str, str, int]
    configs: int
    runs: int
    replicate_sd: float
    sampling_sd: float
    fid: float
    images: int
    train_seconds: float
    seconds_per_image: float
    reference_images: int | None
    df: int = 0  # degrees of freedom behind replicate_sd: sum over configs of (replicates - 1)

    def upper_factor(self, confidence: float = UPPER_CONFIDENCE) -> float:
        """How much larger the true spread may be: its one-sided ``confidence`` upper bound over the estimate (chi-square,
        ``df`` degrees of freedom). A pilot of two replicates has one: the bound is 3.9x the estimate."""
        return float(np.sqrt(self.df / stats.chi2.ppf(1 - confidence, self.df))) if self.df else float("inf")

    @property
    def images_sd(self) -> float:
        """The images' share of the replicate spread: at most the intervals' sampling sd, and never more than
        the spread itself (replicates with one sample.seed share x_T and the reference, so part of it cancels)."""
        return min(self.sampling_sd, self.replicate_sd)

    @property
    def seed_sd(self) -> float:
        return float(np.sqrt(self.replicate_sd**2 - self.images_sd**2))

    def sd_at(self, images: int) -> float:
        """One replicate's log-FID spread with ``images`` generated images per run (the pilot's own at its N)."""
        return float(np.sqrt(self.seed_sd**2 + self.images_sd**2 * self.images / images))


def pilots(selection: Selection) -> list[Pilot]:
    """Every way of sampling where some config has two or more replicates (its log FID spread)."""
    evaluations = selection.evaluations[selection.evaluations["metrics.fid"] > 0]
    train_seconds = selection.trainings.get("metrics.train_seconds", pd.Series(dtype=float)).mean()
    out = []
    for way, rows in evaluations.groupby(["params.sampler", "params.spacing", "steps"], sort=True):
        logs = np.log(rows["metrics.fid"].astype(float))
        groups = [g for _, g in logs.groupby(rows["config"]) if len(g) >= 2]
        if not groups:
            continue
        pooled_var = sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups) / sum(len(g) - 1 for g in groups)
        half = (rows.get("metrics.fid_ci_high", np.nan) - rows.get("metrics.fid_ci_low", np.nan)) / 2
        sampling = float(np.nanmean((half / Z95 / rows["metrics.fid"]) ** 2)) if np.isfinite(half).any() else 0.0
        reference = pd.to_numeric(rows.get("params.reference_images.test", pd.Series(dtype=float)), errors="coerce").dropna()
        out.append(Pilot(
            way=(str(way[0]), str(way[1]), int(way[2])), configs=rows["config"].nunique(), runs=len(rows),
            replicate_sd=float(np.sqrt(pooled_var)), sampling_sd=float(np.sqrt(sampling)), fid=float(np.exp(logs.mean())),
            images=int(pd.to_numeric(rows["params.num_generated"]).iloc[0]) if "params.num_generated" in rows else 0,
            train_seconds=float(train_seconds) if np.isfinite(train_seconds) else float("nan"),
            seconds_per_image=float(rows["metrics.seconds_per_sample"].mean()) if "metrics.seconds_per_sample" in rows else float("nan"),
            reference_images=int(reference.iloc[0]) if len(reference) else None, df=sum(len(g) - 1 for g in groups),
        ))  # fmt: skip
    if not out:
        raise NoPilot("the selection holds no config with two or more replicates, so no seed-to-seed spread to plan from: "
                      "queue some, e.g. `dvc exp run --queue -S train.seed=0,1,2`")  # fmt: skip
    return out


def plan_rows(pilot: Pilot, target: Target, multiples: tuple[int, ...] = IMAGE_MULTIPLES) -> list[dict]:
    """For N, 2N, 4N, 8N images per run: the replicate spread, seeds per config for 80% power at that spread and at
    its 80% upper bound (a small pilot's spread is itself uncertain), and the cost of two configs at the first count
    (their training runs, and sampling this one way)."""
    effect = target.log_effect(pilot.fid)
    out = []
    for multiple in multiples:
        images = pilot.images * multiple
        sd = pilot.sd_at(images)
        seeds = planning.seeds_needed(effect, sd)
        cautious = planning.seeds_needed(effect, sd * pilot.upper_factor()) if np.isfinite(pilot.upper_factor()) else None
        seconds = None if seeds is None else 2 * seeds * (pilot.train_seconds + images * pilot.seconds_per_image)
        out.append({"images": images, "sd": sd, "seeds": seeds, "seeds_upper": cautious, "seconds": seconds})
    return out
