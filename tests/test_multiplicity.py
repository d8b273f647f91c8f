"""Multiple-comparison corrections: golden adjusted p-values worked by hand from the definitions
(Benjamini & Hochberg 1995, Holm 1979), and the guarantees each makes, measured in simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ddpmlab.evaluation import multiplicity
from ddpmlab.evaluation.correction_names import CORRECTIONS

ALPHA = multiplicity.ALPHA


def test_the_names_params_yaml_may_give_are_the_methods():
    assert tuple(multiplicity.METHODS) == CORRECTIONS


def test_golden_adjusted_p_values():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005, 0.01, 0.03, 0.04.
    BH: m p / rank = 0.02, 0.02, 0.04, 0.04, running minimum from the top: the same.
    Holm: (m - rank + 1) p = 0.02, 0.03, 0.06, 0.04, running maximum: 0.02, 0.03, 0.06, 0.06."""
    p = [0.01, 0.04, 0.03, 0.005]
    assert multiplicity.adjusted(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert multiplicity.adjusted(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert multiplicity.adjusted(p, "none") == pytest.approx(p)


def test_adjusted_values_are_capped_at_one_and_untested_entries_do_not_count():
    q = multiplicity.adjusted([0.5, float("nan"), 0.9], "holm")  # m = 2, not 3
    assert q[0] == pytest.approx(1.0) and np.isnan(q[1]) and q[2] == pytest.approx(1.0)
    assert multiplicity.adjusted([0.02, float("nan")], "bh")[0] == pytest.approx(0.02)
    assert multiplicity.adjusted([], "bh").shape == (0,)


def test_an_unknown_method_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'bonferroni'.*bh, holm, none"):
        multiplicity.adjusted([0.1], "bonferroni")


def _z_p_values(rng: np.random.Generator, effects: np.ndarray, studies: int) -> np.ndarray:
    """Two-sided p-values (studies, m) of z tests whose true standardised effects are ``effects`` (m,)."""
    z = rng.standard_normal((studies, len(effects))) + effects
    return 2 * stats.norm.sf(np.abs(z))


@pytest.mark.parametrize("method", ["bh", "holm"])
def test_with_every_null_true_a_study_rarely_claims_anything(method):
    """54 true nulls (the schedule study's size): without a correction nearly every study claims
    something (1 - 0.95^54 = 94%); BH and Holm keep the share of studies with any claim at most 5%
    (BH: with every null true, its FDR is that share). 4,000 studies: Monte-Carlo sd 0.34 points."""
    rng = np.random.default_rng(0)
    p = _z_p_values(rng, np.zeros(54), 4000)
    any_claim = np.mean([(multiplicity.adjusted(row, method) <= ALPHA).any() for row in p])
    assert any_claim <= ALPHA + 0.01
    assert np.mean((p <= ALPHA).any(axis=1)) > 0.9  # what the uncorrected table does


def test_bh_keeps_the_false_discovery_proportion_at_five_percent_with_real_differences_mixed_in():
    """12 real differences (effect 3 sd) among 42 nulls: the false discoveries among the claims average
    at most 5% (BH guarantees m0 / m * 5% = 3.9% here), while most real differences are found."""
    rng = np.random.default_rng(1)
    effects = np.r_[np.full(12, 3.0), np.zeros(42)]
    p = _z_p_values(rng, effects, 4000)
    fdp, found = [], []
    for row in p:
        claimed = multiplicity.adjusted(row, "bh") <= ALPHA
        fdp.append(claimed[12:].sum() / max(claimed.sum(), 1))
        found.append(claimed[:12].mean())
    assert np.mean(fdp) <= ALPHA
    assert np.mean(found) > 0.5


def test_holm_finds_fewer_than_bh_on_the_same_tables():
    rng = np.random.default_rng(2)
    p = _z_p_values(rng, np.r_[np.full(12, 3.0), np.zeros(42)], 500)
    bh = np.mean([(multiplicity.adjusted(row, "bh") <= ALPHA).sum() for row in p])
    holm = np.mean([(multiplicity.adjusted(row, "holm") <= ALPHA).sum() for row in p])
    assert holm < bh


def test_the_family_is_described_in_words():
    assert multiplicity.describe("bh", 54) == "Benjamini-Hochberg (false discovery rate) at 5% across 54 comparisons"
    assert multiplicity.describe("holm", 1).endswith("across 1 comparison")
    assert multiplicity.describe("none", 3) == "no correction for the 3 comparisons (each at 5%)"
