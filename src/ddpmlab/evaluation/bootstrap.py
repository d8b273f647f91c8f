"""Seeded bootstrap resampling of image sets, and intervals read off the resampled scores.

What is resampled: images, with replacement, never network calls. Every score is recomputed
from features or per-image indicators already in memory, B times (``evaluate.bootstrap``).
The draws are keyed by (role, set size) and seeded by the protocol seed, so every run of one
evaluation sees the *same* resampled indices: run A's b-th generated resample uses the same
image indices (hence the same x_T seeds) as run B's, and both meet the same b-th resample of
the reference split. That makes differences between runs paired (:func:`difference`).

The interval is the bootstrap percentile interval recentred on the estimate:
``[est + q_{a/2} - m, est + q_{1-a/2} - m]`` with q the quantiles and m the median of the B
resampled scores. Plain percentile intervals are centred on the *resampled* scores, and
resampling with replacement repeats images, which raises FID by about as much as the small-N
bias itself (a set of N images with ~0.63 N distinct ones looks less diverse). Recentring keeps
the bootstrap's spread and shape but puts it around the estimate, so the interval covers what
the same protocol gives on average at this N (tested against repeated draws: tests/test_bootstrap.py).
It is not an interval for the infinite-N value: FID at small N is biased upward by design.

A paired difference also gets a p-value, the one that inverts that interval: twice the smaller
tail of the recentred replicates beyond 0, with the usual +1 so that B resamples never claim a
p-value below 1 / (B + 1). Tables of many differences adjust these together
(:mod:`ddpmlab.evaluation.multiplicity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

LEVEL = 0.95


@dataclass
class Resampler:
    """B seeded resamples per (role, size): indices (B, size) drawn with replacement.

    ``role`` names what is resampled ("generated", "test", "train", ...): different roles get
    independent draws, the same role and size always the same ones."""

    resamples: int
    seed: int
    _drawn: dict = field(default_factory=dict, init=False, repr=False)

    def indices(self, role: str, size: int) -> torch.Tensor:
        key = (role, size)
        if key not in self._drawn:
            role_code = int.from_bytes(role.encode()[:8].ljust(8, b"\0"), "little")
            rng = np.random.default_rng([self.seed, role_code, size])
            self._drawn[key] = torch.from_numpy(rng.integers(0, size, size=(self.resamples, size)))
        return self._drawn[key]

    def counts(self, role: str, size: int) -> torch.Tensor:
        """(B, size) float64: how often each item appears in each resample (rows sum to size)."""
        index = self.indices(role, size)
        counts = torch.zeros(self.resamples, size, dtype=torch.float64)
        return counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))


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


def _recentred(estimate: float, replicates: np.ndarray | torch.Tensor) -> np.ndarray:
    """The finite replicates (B,) shifted so that their median sits on ``estimate``."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    return values - np.median(values) + estimate if len(values) else values


def interval(estimate: float, replicates: np.ndarray | torch.Tensor, level: float = LEVEL) -> Interval:
    """The percentile interval of ``replicates`` (B,) recentred on ``estimate`` (see the module doc)."""
    values = _recentred(estimate, replicates)
    if len(values) < 2:
        return Interval(float("nan"), float("nan"))
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(low), float(high))


def p_value(estimate: float, replicates: np.ndarray | torch.Tensor) -> float:
    """Two-sided p-value of "the difference is 0" that inverts :func:`interval`: (B,) replicates of the difference."""
    values = _recentred(estimate, replicates)
    if len(values) < 2:
        return float("nan")
    tail = min(np.count_nonzero(values <= 0), np.count_nonzero(values >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(values) + 1)))


def mean_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, Interval]:
    """(mean of ``values`` (N,), its :func:`interval` over ``resamples`` seeded resamples of the N values)."""
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    mean = float(values.mean())
    return mean, interval(mean, values[draws].mean(axis=1), level)


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
    estimate_a: float, replicates_a, estimate_b: float, replicates_b, *, sizes: tuple[int, int], names: tuple[str, str] = ("A", "B"),
    level: float = LEVEL,
) -> Difference:  # fmt: skip
    """Paired bootstrap: replicates_a[b] and replicates_b[b] come from the same resampled indices,
    which holds only for sets of one size: ``sizes`` (images in a, in b) must be equal."""
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"{names[0]} has {sizes[0]} images and {names[1]} {sizes[1]}: a paired difference needs the same resampled indices, "
            "so the same number of images on both sides"
        )
    diff = np.asarray(replicates_a, dtype=np.float64) - np.asarray(replicates_b, dtype=np.float64)
    estimate = estimate_a - estimate_b
    return Difference(estimate, interval(estimate, diff, level), p_value(estimate, diff))
