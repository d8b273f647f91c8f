"""Seeds a comparison needs (ddpmlab.reporting.planning): the noncentral-t power against textbook values
and against simulation through the same tests `ddpmlab compare` runs (replicates.contrast)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpmlab.reporting import planning, replicates


def test_power_matches_the_textbook_two_sample_values():
    """Cohen's d = 1 with 17 per group gives 80.7% power at 5% two-sided (the classic n = 17 for d = 1);
    d = 0.5 needs 64 per group for 80%."""
    assert planning.power(17, 1.0, 1.0) == pytest.approx(0.807, abs=0.005)
    assert planning.seeds_needed(0.5, 1.0) == 64
    assert planning.seeds_needed(1.0, 1.0) == 17


def test_power_stays_defined_where_scipys_noncentral_t_gives_nan():
    """A 10% gap at a log-sd of 0.002 (d = 53): scipy's nct returns NaN; the power is 1, and more seeds never lower it."""
    assert planning.power(2, 0.105, 0.002) == pytest.approx(1.0)
    needed = [planning.seeds_needed(0.105, sd) for sd in (0.006, 0.004, 0.003, 0.002, 0.001)]
    assert needed == sorted(needed, reverse=True) and needed[-1] == 2


def test_pairing_needs_fewer_seeds_as_the_correlation_grows():
    unpaired = planning.seeds_needed(0.2, 0.2)
    paired = [planning.seeds_needed(0.2, 0.2, paired=True, correlation=r) for r in (0.0, 0.5, 0.8)]
    assert unpaired > paired[1] > paired[2] and paired[0] >= unpaired // 2
    assert planning.seeds_needed(0.0, 0.2) is None and planning.seeds_needed(1e-6, 0.2) is None  # beyond MAX_SEEDS


@pytest.mark.parametrize("paired", [False, True])
def test_the_planned_seeds_give_80_percent_power_in_simulation(paired):
    """A 10% lower geometric-mean FID, lognormal seed-to-seed spread (log-sd 0.12; paired: a per-seed effect shared with
    r = 0.5). The planned k, run 2,000 times through replicates.contrast: power within 7 points of what the planner
    computes for k (at least 80%)."""
    rng = np.random.default_rng(11 + paired)
    effect, sd, r = np.log(0.9), 0.12, 0.5 if paired else 0.0
    k = planning.seeds_needed(effect, sd, paired=paired, correlation=r)
    planned = planning.power(k, effect, sd, paired=paired, correlation=r)
    seeds = list(range(k))
    found = []
    for _ in range(2000):
        shared = rng.normal(0, sd * np.sqrt(r), k)
        a = np.exp(1.0 + shared + rng.normal(0, sd * np.sqrt(1 - r), k))
        b = np.exp(1.0 + effect + shared + rng.normal(0, sd * np.sqrt(1 - r), k))
        other = seeds if paired else [s + 100 for s in seeds]
        c = replicates.contrast(replicates.pool(list(a), seeds=seeds), replicates.pool(list(b), seeds=other), log_scale=True)
        found.append(c.p_value <= 0.05)
    measured = float(np.mean(found))
    print(f"{'paired' if paired else 'Welch'}: k = {k}, planned power {planned:.1%}, simulated {measured:.1%}")
    assert planned >= planning.POWER and abs(measured - planned) <= 0.07


def test_an_unresolved_contrast_says_how_many_seeds_would_resolve_it():
    a, b = (2.0, 2.3, 1.8), (1.9, 2.2, 1.7)
    c = replicates.contrast(replicates.pool(list(a), seeds=["x", "y", "z"]), replicates.pool(list(b), seeds=["p", "q", "r"]), log_scale=True)
    assert c.design == "welch" and c.seed_sd == pytest.approx(np.sqrt((np.var(np.log(a), ddof=1) + np.var(np.log(b), ddof=1)) / 2))
    assert c.seeds_for_power() == planning.seeds_needed(np.log(c.effect), c.seed_sd) and c.seeds_for_power() > 3
