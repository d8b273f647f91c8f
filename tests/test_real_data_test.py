"""The exact test against real data (ddpmlab.evaluation.real_data_test): its statistic against
torch-fidelity's FID, its size under the null, its power in a simulation shaped like the default
protocol, and the detectable gap it states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmlab.evaluation.metrics import frechet_distance
from ddpmlab.evaluation.real_data_test import fid_permutation_test

# The default protocol's shape: 500 generated images against the 359 test images, 128 features.
N, M, D = 500, 359, 128
PERMUTATIONS = 200  # per simulated test: p-values in steps of 0.005, enough to tell p <= 0.05


@pytest.mark.parametrize("dims", [6, 64])  # covariances, and Gram matrices where features outnumber images
def test_the_statistic_is_the_fid_of_the_two_sets(dims):
    rng = np.random.default_rng(0)
    x, y = torch.from_numpy(rng.normal(0, 1, (40, dims))), torch.from_numpy(rng.normal(0.2, 1.1, (30, dims)))
    assert fid_permutation_test(x, y, permutations=20).fid == pytest.approx(frechet_distance(x, y), rel=1e-6)


def test_too_few_images_are_refused_naming_the_counts():
    with pytest.raises(ValueError, match="has 1 generated, 5 reference"):
        fid_permutation_test(torch.zeros(1, 3), torch.zeros(5, 3))


def _protocol_features(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-direction variances (D,) with a steep spectrum (k^-2), scaled so that real-vs-real FID at 500 vs 359
    images is ~1.4, like the default run's floor (its FID then varies by ~0.55 between draws, about the
    committed run's interval width); and a random unit direction for the gap."""
    variances = np.arange(1, D + 1, dtype=np.float64) ** -2.0
    draws = [frechet_distance(torch.from_numpy(rng.standard_normal((N, D)) * np.sqrt(variances)),
                              torch.from_numpy(rng.standard_normal((M, D)) * np.sqrt(variances))) for _ in range(10)]  # fmt: skip
    variances *= 1.4 / np.mean(draws)
    direction = rng.standard_normal(D)
    return variances, direction / np.linalg.norm(direction)


def _rejections(rng, variances, direction, gap: float, repetitions: int, alpha: float = 0.05) -> tuple[float, float]:
    """(share of repetitions with p <= alpha, mean stated detectable FID gap) for generated features whose mean is
    off by a population FID of ``gap`` (a mean shift of length sqrt(gap))."""
    found, detectable = [], []
    for r in range(repetitions):
        x = rng.standard_normal((N, D)) * np.sqrt(variances) + np.sqrt(gap) * direction
        y = rng.standard_normal((M, D)) * np.sqrt(variances)
        test = fid_permutation_test(torch.from_numpy(x), torch.from_numpy(y), permutations=PERMUTATIONS, seed=r)
        found.append(test.p_value <= alpha)
        detectable.append(test.detectable)
    return float(np.mean(found)), float(np.mean(detectable))


def test_the_p_values_are_exact_when_generated_and_real_images_match():
    """Same distribution on both sides, 1,000 repetitions at the protocol's sizes and 8 features, 40 shuffles each:
    exchangeable labels make P(p <= k / 41) = k / 41 at any N, so p <= 0.1 (k = 4) 9.8% of the time (binomial
    sd 0.9 points) and mean p 21 / 41 = 0.512 (sd 0.009)."""
    rng = np.random.default_rng(11)
    spread = np.sqrt(np.arange(1, 9, dtype=np.float64) ** -2.0)
    p = np.array([
        fid_permutation_test(torch.from_numpy(rng.standard_normal((N, 8)) * spread), torch.from_numpy(rng.standard_normal((M, 8)) * spread),
                             permutations=40, seed=r).p_value
        for r in range(1000)
    ])  # fmt: skip
    assert abs(np.mean(p <= 0.1) - 4 / 41) <= 3 * 0.0094 and abs(p.mean() - 21 / 41) <= 3 * 0.009


def test_power_against_a_gap_of_one_and_two_fid_in_the_protocol_shaped_simulation():
    """The issue's bar: at least 40% at a 1.0 FID gap (the floor verdict found it 9% of the time in an audit's
    simulation of this shape, a KID permutation test 30-32%). 100 repetitions: binomial sd about 5 points."""
    rng = np.random.default_rng(2)
    variances, direction = _protocol_features(rng)
    one, _ = _rejections(rng, variances, direction, 1.0, 100)
    two, _ = _rejections(rng, variances, direction, 2.0, 40)
    print(f"power at a 1.0 FID gap {one:.0%}, at 2.0 {two:.0%}")
    assert one >= 0.40 and two >= 0.8


def test_the_stated_detectable_gap_is_found_about_80_percent_of_the_time():
    """The FID gap the test states it would detect with 80% power, made real, then the test run on fresh draws."""
    rng = np.random.default_rng(3)
    variances, direction = _protocol_features(rng)
    _, stated = _rejections(rng, variances, direction, 0.0, 20)
    power, _ = _rejections(rng, variances, direction, stated, 60)
    print(f"stated detectable FID gap {stated:.3g}; found in {power:.0%}")
    assert 0.65 <= power <= 0.95
