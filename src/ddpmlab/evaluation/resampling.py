"""Replicates of every score over resampled image sets, and the intervals and paired p-values read off them.

What is resampled: images, never network calls. Every score is recomputed from features or
per-image indicators already in memory, once per replicate, from per-image weights
(:meth:`counts`). Draws are keyed by (role, set size) and seeded by the protocol seed, so every
run of one evaluation sees the *same* replicates: run A's k-th replicate leaves out (or repeats)
the same image indices, hence the same x_T seeds, as run B's, and both meet the same k-th
replicate of the reference split. So the difference of two runs' replicates is a replicate of
their difference (:func:`difference`): comparisons are paired.

Two schemes share that interface, and the pipeline uses the one that measured better
(benchmarks/interval_methods.py, docs/comparing.md#how-wide-the-intervals-are):

- :class:`Jackknife` (the default, ``evaluate.jackknife_groups``): the images are split into G
  seeded groups and replicate k leaves group k out (Quenouille-Tukey grouped jackknife). Its
  standard error sqrt((G - 1) / G * sum_k (theta_k - mean theta)^2) was 1.10x the true sampling
  sd of FID at the project's protocol (D = 128, 500 images against 359, a real gap), and 1.2-1.7x
  with identical distributions.
- :class:`Bootstrap`: B resamples with replacement. A resample repeats images (about 0.63 N
  distinct ones), which the covariance terms of FID read as lost diversity, so its spread was
  1.80x the true sd there (up to 4.3x elsewhere): valid intervals, but 3x too costly in images.

Either way the interval is estimate +- t * se (Student t on the scheme's degrees of freedom: G - 1
for the jackknife, normal for the bootstrap), and a paired difference's p-value is the one that
inverts it. It covers what the same protocol gives on average at this N, not the infinite-N value:
FID at small N is biased upward by design. Tables of many differences adjust the p-values
together (:mod:`ddpmlab.evaluation.multiplicity`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

LEVEL = 0.95


def _role_seed(seed: int, role: str, size: int) -> list[int]:
    return [seed, int.from_bytes(role.encode()[:8].ljust(8, b"\0"), "little"), size]


@dataclass
class Bootstrap:
    """B seeded resamples per (role, size): indices (B, size) drawn with replacement.

    ``role`` names what is resampled ("generated", "test", "train", ...): different roles get
    independent draws, the same role and size always the same ones."""

    resamples: int
    seed: int
    _drawn: dict = field(default_factory=dict, init=False, repr=False)
    name = "bootstrap"

    @property
    def degrees_of_freedom(self) -> float:
        return math.inf

    def indices(self, role: str, size: int) -> list[torch.Tensor]:
        """Per replicate, the image indices it scores: B tensors of ``size``, repeats allowed."""
        return list(self._index(role, size))

    def _index(self, role: str, size: int) -> torch.Tensor:
        key = (role, size)
        if key not in self._drawn:
            rng = np.random.default_rng(_role_seed(self.seed, role, size))
            self._drawn[key] = torch.from_numpy(rng.integers(0, size, size=(self.resamples, size)))
        return self._drawn[key]

    def counts(self, role: str, size: int) -> torch.Tensor:
        """(B, size) float64: how often each item appears in each resample (rows sum to size)."""
        index = self._index(role, size)
        counts = torch.zeros(self.resamples, size, dtype=torch.float64)
        return counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))

    def standard_error(self, replicates: np.ndarray) -> float:
        """The sd of the B resampled scores."""
        return float(np.std(replicates, ddof=1))

    def bias_corrected(self, estimate: float, replicates: np.ndarray) -> float:
        """estimate - (mean of the resamples - estimate) (Efron & Tibshirani 1993, eq. 10.8)."""
        return float(2 * estimate - np.mean(replicates))


@dataclass
class Jackknife:
    """Grouped jackknife: per (role, size), a seeded split of the images into G groups of near-equal
    size; replicate k scores every image but group k's."""

    groups: int
    seed: int
    _drawn: dict = field(default_factory=dict, init=False, repr=False)
    name = "jackknife"

    @property
    def degrees_of_freedom(self) -> float:
        return self.groups - 1

    def group_of(self, role: str, size: int) -> torch.Tensor:
        """(size,) long: each image's group, 0 .. G - 1 (size >= G)."""
        key = (role, size)
        if size < self.groups:
            raise ValueError(f"a jackknife of {self.groups} groups needs at least {self.groups} images; {role} has {size} (lower evaluate.jackknife_groups)")
        if key not in self._drawn:
            order = np.random.default_rng(_role_seed(self.seed, role, size)).permutation(size)
            group = np.empty(size, dtype=np.int64)
            group[order] = np.arange(size) % self.groups
            self._drawn[key] = torch.from_numpy(group)
        return self._drawn[key]

    def indices(self, role: str, size: int) -> list[torch.Tensor]:
        """Per replicate, the indices it keeps (in their original order): G tensors of size - |group k|."""
        group = self.group_of(role, size)
        return [torch.nonzero(group != k).squeeze(1) for k in range(self.groups)]

    def counts(self, role: str, size: int) -> torch.Tensor:
        """(G, size) float64: 0 for the left-out group's images, 1 for the kept ones."""
        return (self.group_of(role, size)[None] != torch.arange(self.groups)[:, None]).double()

    def standard_error(self, replicates: np.ndarray) -> float:
        """sqrt((G - 1) / G * sum_k (theta_k - mean)^2) over the G leave-one-group-out scores."""
        g = len(replicates)
        return float(np.sqrt((g - 1) / g * ((replicates - replicates.mean()) ** 2).sum()))

    def bias_corrected(self, estimate: float, replicates: np.ndarray) -> float:
        """G * estimate - (G - 1) * mean(leave-outs) (Quenouille 1956): removes a bias of order 1 / N.
        Each leave-out has (G - 1) / G of every set, so a bias a / N + b / M grows by G / (G - 1) in it."""
        g = len(replicates)
        return float(g * estimate - (g - 1) * np.mean(replicates))


Resampler = Bootstrap | Jackknife


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def clamped(self, bounds: tuple[float | None, float | None]) -> Interval:
        """The interval cut to a score's valid range (low, high; None: unbounded): FID never below 0, a rate never above 1."""
        low, high = self.low, self.high
        if bounds[0] is not None:
            low, high = max(low, bounds[0]), max(high, bounds[0])
        if bounds[1] is not None:
            low, high = min(low, bounds[1]), min(high, bounds[1])
        return Interval(low, high)


def standard_error(replicates: np.ndarray | torch.Tensor, scheme: Resampler) -> float:
    """The estimate's standard error from its replicates (R,) under ``scheme``; NaN when any is not
    finite (a jackknife needs every group) or fewer than 2 are."""
    values = np.asarray(replicates, dtype=np.float64)
    if len(values) < 2 or not np.isfinite(values).all():
        return float("nan")
    return scheme.standard_error(values)


def _quantile(scheme: Resampler, level: float) -> float:
    return float(stats.t.ppf((1 + level) / 2, scheme.degrees_of_freedom))


def interval(estimate: float, replicates: np.ndarray | torch.Tensor, scheme: Resampler, level: float = LEVEL) -> Interval:
    """estimate +- t * se, se from ``replicates`` (R,) (see the module doc)."""
    half = _quantile(scheme, level) * standard_error(replicates, scheme)
    return Interval(estimate - half, estimate + half)


def p_value(estimate: float, replicates: np.ndarray | torch.Tensor, scheme: Resampler) -> float:
    """Two-sided p-value of "the difference is 0" that inverts :func:`interval`: (R,) replicates of the difference."""
    se = standard_error(replicates, scheme)
    if not np.isfinite(se):
        return float("nan")
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * stats.t.sf(abs(estimate) / se, scheme.degrees_of_freedom))


def mean_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, Interval]:
    """(mean of ``values`` (N,), its t interval: mean +- t_{N-1} * sd / sqrt(N))."""
    mean = float(values.mean())
    if len(values) < 2:
        return mean, Interval(float("nan"), float("nan"))
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1)) * float(values.std(ddof=1)) / len(values) ** 0.5
    return mean, Interval(mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """a - b with its paired interval and p-value; ``detected`` when the interval excludes 0 (one
    comparison alone: a table of them decides on adjusted p-values, :mod:`multiplicity`)."""

    estimate: float
    interval: Interval
    p_value: float

    @property
    def detected(self) -> bool:
        """The interval excludes 0; never for an interval that could not be computed (NaN)."""
        return bool(np.isfinite(self.interval.low) and np.isfinite(self.interval.high) and not self.interval.contains(0.0))


def difference(
    estimate_a: float, replicates_a, estimate_b: float, replicates_b, scheme: Resampler, *, sizes: tuple[int, int],
    names: tuple[str, str] = ("A", "B"), level: float = LEVEL,
) -> Difference:  # fmt: skip
    """Paired: replicates_a[k] and replicates_b[k] come from the same resampled (or left-out) image
    indices, which holds only for sets of one size: ``sizes`` (images in a, in b) must be equal."""
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"{names[0]} has {sizes[0]} images and {names[1]} {sizes[1]}: a paired difference needs the same resampled indices, "
            "so the same number of images on both sides"
        )
    diff = np.asarray(replicates_a, dtype=np.float64) - np.asarray(replicates_b, dtype=np.float64)
    estimate = estimate_a - estimate_b
    return Difference(estimate, interval(estimate, diff, scheme, level), p_value(estimate, diff, scheme))
