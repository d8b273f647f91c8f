"""Replicated scores, intervals and paired comparisons, against closed forms, torch-fidelity and repeated draws.

Coverage and width: two known Gaussians in D = 16 dimensions, N = 200 images on each side, the
second with a shifted mean and stretched variances (and, separately, identical ones). The target
is what the estimator gives on average at this N (FID is biased upward at small N), from repeated
draws; over R = 1,000 repetitions (binomial sd at 95%: 0.7%) the jackknife's 95% interval must
cover it 93-97% of the time, and its standard error must be within 1.2x the sd of the estimate
over the draws. benchmarks/interval_methods.py measures the same at D = 128 and other N.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from ddpmlab.evaluation import resampled_scores as rs
from ddpmlab.evaluation import scorecard
from ddpmlab.evaluation.metrics import frechet_distance
from ddpmlab.evaluation.real_data_test import RealDataTest
from ddpmlab.evaluation.resampling import Bootstrap, Jackknife, Resampler, difference, interval, p_value, standard_error
from ddpmlab.evaluation.verdicts import sampling_verdicts

N, D, REPETITIONS, RESAMPLES, GROUPS = 200, 16, 1000, 200, 50
PAIRED_REPETITIONS = 200  # detection rates: binomial sd 1.5% at 5%, 2.8% at 80%
BOOTSTRAP = Bootstrap(RESAMPLES, seed=0)  # the scheme of the hand-made replicates below: their sd is the standard error


def two_gaussians(rng: np.random.Generator, n: int = N, shift: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, D) from N(0, I) and from N(shift / 2, diag(linspace(1, 1 + shift)^2)); shift 0: the same Gaussian."""
    x = rng.standard_normal((n, D))
    y = rng.standard_normal((n, D)) * np.linspace(1, 1 + shift, D) + shift / 2
    return torch.from_numpy(x), torch.from_numpy(y)


def resampled_fid(x: torch.Tensor, y: torch.Tensor, resampler: Resampler) -> torch.Tensor:
    generated = rs.weighted_moments(x, resampler.counts("generated", len(x)))
    reference = rs.weighted_moments(y, resampler.counts("test", len(y)), with_sqrt=True)
    return rs.frechet(generated, reference)


def all_ones(n: int) -> torch.Tensor:
    return torch.ones(1, n, dtype=torch.float64)


def test_fid_of_the_unresampled_sets_equals_torch_fidelitys():
    x, y = two_gaussians(np.random.default_rng(0))
    ours = rs.frechet(rs.weighted_moments(x, all_ones(N)), rs.weighted_moments(y, all_ones(N), with_sqrt=True))
    assert ours.item() == pytest.approx(frechet_distance(x, y), rel=1e-9)


def test_fid_approaches_the_gaussian_closed_form():
    """For diagonal covariances FID = ||mu_1 - mu_2||^2 + sum_i (sigma_1i - sigma_2i)^2 (Dowson & Landau 1982)."""
    x, y = two_gaussians(np.random.default_rng(1), n=40_000)
    closed_form = D * 0.25**2 + float(((np.linspace(1, 1.5, D) - 1) ** 2).sum())
    ours = rs.frechet(rs.weighted_moments(x, all_ones(len(x))), rs.weighted_moments(y, all_ones(len(y)), with_sqrt=True))
    assert ours.item() == pytest.approx(closed_form, abs=0.02)  # the small-N bias is ~2 D / N = 8e-4 here


def test_resampled_moments_do_not_depend_on_how_many_resamples_go_at_once(monkeypatch):
    """A large split goes a few resamples at a time (WEIGHTED_BYTES); one at a time gives the same moments."""
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((N, D)))
    counts = Bootstrap(10, seed=0).counts("test", N)
    together = rs.weighted_moments(x, counts, with_sqrt=True)
    monkeypatch.setattr(rs, "WEIGHTED_BYTES", 1)
    alone = rs.weighted_moments(x, counts, with_sqrt=True)
    for a, b in [(together.mean, alone.mean), (together.cov, alone.cov), (together.sqrt_cov, alone.sqrt_cov)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_kid_of_the_unresampled_sets_equals_torch_fidelitys():
    x, y = two_gaussians(np.random.default_rng(2))
    theirs = kid_features_to_metric(x, y, kid_subsets=1, kid_subset_size=N, rng_seed=0, verbose=False)["kernel_inception_distance_mean"]
    assert rs.kid(x, y, all_ones(N), all_ones(N)).item() == pytest.approx(theirs, rel=1e-9)


def test_kids_within_set_term_built_a_block_of_rows_at_a_time_is_the_mean_over_pairs_of_different_images():
    """The reference's term is built KERNEL_ROWS rows at a time (a 60,000-image split's whole kernel is
    28.8 GB); blocks of 3 rows over 10 images, the last one short, against the definition summed pair by pair."""
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((10, D)))
    counts = Bootstrap(5, seed=0).counts("test", 10)
    k = rs.polynomial_kernel(x, x)
    pairs = [(i, j) for i in range(10) for j in range(10) if i != j]
    expected = [sum(w[i] * w[j] * k[i, j] for i, j in pairs) / sum(w[i] * w[j] for i, j in pairs) for w in counts.double()]
    assert rs.within_mean(x, counts, rows=3).tolist() == pytest.approx([float(e) for e in expected], rel=1e-12)


def test_kid_built_a_few_kernel_rows_at_a_time_equals_kid_from_whole_matrices(monkeypatch):
    x, y = two_gaussians(np.random.default_rng(6))
    w_x, w_y = Bootstrap(8, seed=0).counts("generated", N), Bootstrap(8, seed=0).counts("test", N)
    whole = rs.kid(x, y, w_x, w_y)
    monkeypatch.setattr(rs, "KERNEL_ROWS", 7)  # N = 200 rows: 28 full blocks and a short one
    torch.testing.assert_close(rs.kid(x, y, w_x, w_y), whole, rtol=1e-12, atol=1e-15)


def test_inception_score_of_the_unresampled_set_equals_torch_fidelitys():
    logits = torch.from_numpy(np.random.default_rng(3).standard_normal((N, 10)) * 3)
    theirs = isc_features_to_metric(logits, splits=4, shuffle=False)["inception_score_mean"]
    assert rs.inception_score(logits, [torch.arange(N)], splits=4).item() == pytest.approx(theirs, rel=1e-9)


@pytest.mark.parametrize("scheme", [Bootstrap, Jackknife])
def test_replicates_are_seeded_per_role_and_size(scheme):
    a, b = scheme(20, seed=0), scheme(20, seed=0)
    assert torch.equal(a.counts("generated", 30), b.counts("generated", 30))  # the same in every run: pairing
    assert not torch.equal(a.counts("generated", 30), a.counts("test", 30))  # roles are independent
    assert not torch.equal(a.counts("generated", 30), scheme(20, seed=1).counts("generated", 30))
    counts = a.counts("generated", 30)
    assert counts.shape == (20, 30) and set(counts.sum(1).tolist()) == ({30.0} if scheme is Bootstrap else {28.0, 29.0})  # resamples: N; leave-outs: the kept


def test_the_jackknife_leaves_every_image_out_exactly_once_in_near_equal_groups():
    jackknife = Jackknife(7, seed=3)
    left_out = jackknife.counts("test", 359) == 0  # (7, 359)
    assert torch.all(left_out.sum(0) == 1) and set(left_out.sum(1).tolist()) == {51, 52}
    kept = jackknife.indices("test", 359)
    assert all(torch.equal(index, torch.nonzero(~out).squeeze(1)) for index, out in zip(kept, left_out))
    with pytest.raises(ValueError, match="a jackknife of 7 groups needs at least 7 images; generated has 5"):
        jackknife.counts("generated", 5)


def test_a_jackknife_replicate_is_the_score_of_the_images_it_keeps():
    """Weighted moments with the jackknife's counts give torch-fidelity's FID of the kept images themselves."""
    x, y = two_gaussians(np.random.default_rng(7))
    jackknife = Jackknife(10, seed=0)
    fids = resampled_fid(x, y, jackknife)
    kept_x, kept_y = jackknife.indices("generated", N), jackknife.indices("test", N)
    for k in (0, 9):
        assert fids[k].item() == pytest.approx(frechet_distance(x[kept_x[k]], y[kept_y[k]]), rel=1e-9)


def test_the_delete_one_jackknife_of_a_mean_is_the_textbook_standard_error():
    """With one image per group the jackknife's standard error of a mean is exactly s / sqrt(n) (Efron & Stein 1981)."""
    values = torch.from_numpy(np.random.default_rng(8).exponential(size=40))
    jackknife = Jackknife(40, seed=0)
    means = rs.proportion(values, jackknife.counts("generated", 40))  # weighted means of the kept values
    assert standard_error(means, jackknife) == pytest.approx(values.std().item() / 40**0.5, rel=1e-9)


def coverage_and_width(replicated, seed: int, shift: float) -> tuple[float, float, float]:
    """Over REPETITIONS pairs of sets: (share of jackknife intervals covering E[estimate at N], mean
    standard error / the estimates' own sd, that expectation). ``replicated(x, y, scheme)``: (R + 1,),
    the estimate first, then its replicates."""
    rng = np.random.default_rng(seed)
    runs = [replicated(*two_gaussians(rng, shift=shift), Jackknife(GROUPS, seed=r)) for r in range(REPETITIONS)]
    estimates = np.array([run[0] for run in runs])
    expected, spread = estimates.mean(), estimates.std(ddof=1)
    scheme = Jackknife(GROUPS, seed=0)
    hits = np.mean([interval(run[0], run[1:], scheme).contains(expected) for run in runs])
    return float(hits), float(np.mean([standard_error(run[1:], scheme) for run in runs]) / spread), float(expected)


def jackknifed_fid(x, y, scheme) -> np.ndarray:
    return np.concatenate([[frechet_distance(x, y)], resampled_fid(x, y, scheme).numpy()])


def test_fid_intervals_cover_the_estimators_expectation_and_are_as_wide_as_its_spread():
    share, width, expected = coverage_and_width(jackknifed_fid, seed=10, shift=0.5)
    assert expected > 3  # a real difference (closed form 2.34 plus the small-N bias)
    assert 0.93 <= share <= 0.97 and width <= 1.2, (share, width)


def test_fid_intervals_between_identical_distributions_cover_but_are_wider_than_the_spread():
    """FID ~ its small-N bias alone: its variance is all second-order, which any replicate scheme reads
    about twice (the sets' chance difference counts as a real one). Measured: coverage 99.5%, width 1.4x
    (the bootstrap: 1.8x). docs/comparing.md#how-wide-the-intervals-are: the 1.2x target is out of reach here."""
    share, width, _ = coverage_and_width(jackknifed_fid, seed=12, shift=0.0)
    assert share >= 0.93 and 1.2 < width <= 1.6, (share, width)


def test_kid_intervals_cover_the_estimators_expectation_and_are_as_wide_as_its_spread():
    def replicated(x, y, scheme):
        ones = torch.ones(1, N, dtype=torch.float64)
        return torch.cat([rs.kid(x, y, ones, ones), rs.kid(x, y, scheme.counts("generated", N), scheme.counts("test", N))]).numpy()

    share, width, _ = coverage_and_width(replicated, seed=11, shift=0.5)
    assert 0.93 <= share <= 0.97 and width <= 1.2, (share, width)


def paired_runs(rng: np.random.Generator, shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two runs of one model from the same x_T: features share a per-image latent (the starting noise)
    plus each sampler's own noise; run b's mean moves by ``shift`` in every dimension. And a reference set."""
    latent = rng.standard_normal((N, D))
    a = latent + 0.3 * rng.standard_normal((N, D))
    b = latent + 0.3 * rng.standard_normal((N, D)) + shift
    reference = rng.standard_normal((N, D)) * np.sqrt(1.09)  # the runs' own covariance: FID ~ 0 plus bias
    return torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(reference)


def detection_rate(shift: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    detected = 0
    for r in range(PAIRED_REPETITIONS):
        a, b, reference = paired_runs(rng, shift)
        scheme = Jackknife(GROUPS, seed=r)
        d = difference(frechet_distance(a, reference), resampled_fid(a, reference, scheme), frechet_distance(b, reference), resampled_fid(b, reference, scheme),
                       scheme, sizes=(len(a), len(b)))  # fmt: skip
        detected += d.detected
    return detected / PAIRED_REPETITIONS


def test_paired_comparison_of_two_runs_from_one_distribution_rarely_claims_a_difference():
    assert detection_rate(shift=0.0, seed=20) <= 0.08


def test_paired_comparison_detects_a_known_shift():
    """A mean shift of 0.2 per dimension (FID difference ~0.64 at D = 16; each run's own 95% interval is
    ~2 wide here) is found in at least 80% of repetitions."""
    assert detection_rate(shift=0.2, seed=21) >= 0.80


def test_sampling_verdicts_name_the_tied_group_per_budget_and_each_run_against_the_floor():
    rng = np.random.default_rng(30)
    shared = torch.from_numpy(rng.normal(0, 0.5, RESAMPLES))  # what the runs' resamples have in common (same images, same reference)

    def reps(value: float, own: float) -> torch.Tensor:
        return value + shared + torch.from_numpy(rng.normal(0, own, RESAMPLES))

    rows = [{"key": "a-5", "nfe": 5, "fid": 3.0}, {"key": "b-5", "nfe": 5, "fid": 3.05}, {"key": "d-5", "nfe": 5, "fid": 9.0},
            {"key": "c-10", "nfe": 10, "fid": 1.0}, {"key": "e-10", "nfe": 10, "fid": 0.2}]  # fmt: skip
    replicates = {"a-5": {"fid": reps(3.0, 0.05)}, "b-5": {"fid": reps(3.05, 0.05)}, "d-5": {"fid": reps(9.0, 0.05)},
                  "c-10": {"fid": reps(1.0, 0.05)}, "e-10": {"fid": reps(0.2, 0.05)}}  # fmt: skip
    floor, floor_replicates = {"fid": 1.0}, {"fid": reps(1.0, 0.05)}
    found = sampling_verdicts(rows, replicates, floor, floor_replicates, BOOTSTRAP, num_images=500, floor_images=500)
    assert found["correction"] == "bh" and "Benjamini-Hochberg" in found["by_budget_family"]
    assert found["by_budget_family"].endswith("across 6 comparisons")  # unique (run, best) pairs: b, d vs a; a, b, d, c vs e
    by_budget = {b["budget"]: b for b in found["by_budget"]}
    assert (by_budget[5]["best"], sorted(by_budget[5]["tied"])) == ("a-5", ["a-5", "b-5"])  # 0.05 apart: tied; d is 6 worse
    assert (by_budget[10]["best"], by_budget[10]["tied"]) == ("e-10", ["e-10"])
    verdicts = {key: v["verdict"] for key, v in found["vs_floor"].items()}
    assert verdicts == {"a-5": "above the floor", "b-5": "above the floor", "d-5": "above the floor",
                        "c-10": "indistinguishable from the floor", "e-10": "below the floor"}  # fmt: skip
    assert all(0 <= v["p"] <= v["q"] <= 1 for v in found["vs_floor"].values())  # adjusted p-values never below the raw ones
    assert found["vs_real"] == {} and found["vs_real_method"] is None  # no exact tests given


def test_the_exact_tests_against_real_data_are_a_family_of_their_own():
    """Three runs' tests: p = 0.01, 0.04, 0.5. Uncorrected two would count; BH gives q = 0.03, 0.06, 0.5, so one does."""
    reps = torch.linspace(0.5, 1.5, RESAMPLES)
    rows = [{"key": k, "nfe": 5, "fid": f} for k, f in (("a-5", 1.0), ("b-5", 1.1), ("c-5", 1.2))]
    tests = {k: RealDataTest(fid=0.01, p_value=p, detectable=0.004, permutations=999, sizes=(500, 359)) for k, p in (("a-5", 0.01), ("b-5", 0.04), ("c-5", 0.5))}
    found = sampling_verdicts(rows, {k: {"fid": reps + i} for i, k in enumerate(("a-5", "b-5", "c-5"))}, {"fid": 1.0}, {"fid": reps},
                              BOOTSTRAP, num_images=500, floor_images=500, against_real=tests)  # fmt: skip
    real = found["vs_real"]
    assert [real[k]["q"] for k in ("a-5", "b-5", "c-5")] == pytest.approx([0.03, 0.06, 0.5])
    assert real["a-5"]["verdict"] == "differs from real data"
    assert real["b-5"]["verdict"] == "indistinguishable from real data at N = 500 against 359 (a FID gap of 0.004 would be found 80% of the time)"
    assert "999 shuffles" in found["vs_real_method"] and found["vs_real_family"].endswith("across 3 comparisons")


def test_floor_verdicts_are_left_out_when_the_floor_has_another_number_of_images():
    """FID's small-N bias depends on N: a run of 500 images against a floor of 300 real ones would compare biases."""
    reps = torch.linspace(0.5, 1.5, RESAMPLES)
    rows = [{"key": "a-5", "nfe": 5, "fid": 3.0}, {"key": "b-5", "nfe": 5, "fid": 1.0}]
    found = sampling_verdicts(rows, {"a-5": {"fid": reps + 2}, "b-5": {"fid": reps}}, {"fid": 1.0}, {"fid": reps}, BOOTSTRAP, num_images=500,
                              floor_images=300)  # fmt: skip
    assert found["vs_floor"] == {} and "the floor has 300 real images and each run 500" in found["vs_floor_family"]
    assert found["by_budget"][0]["best"] == "b-5"


def test_a_paired_difference_refuses_runs_of_unequal_size_naming_both():
    reps = torch.zeros(RESAMPLES)
    with pytest.raises(ValueError, match=r"ddpm-50 has 500 images and ddim-10 400"):
        difference(1.0, reps, 2.0, reps, BOOTSTRAP, sizes=(500, 400), names=("ddpm-50", "ddim-10"))


def test_the_p_value_inverts_the_interval():
    """p < 5% exactly where the 95% interval excludes 0; at the interval's end p = 5%; for the jackknife
    both use Student's t on G - 1 degrees of freedom (G = 10: t_9 = 2.262, against the normal's 1.960)."""
    rng = np.random.default_rng(3)
    for scheme in (Bootstrap(999, seed=0), Jackknife(10, seed=0)):
        replicates = torch.from_numpy(rng.normal(0, 1.0, len(scheme.counts("test", 20))))
        se = standard_error(replicates, scheme)
        edge = {"bootstrap": 1.959964, "jackknife": 2.262157}[scheme.name] * se
        assert interval(1.0, replicates, scheme).high == pytest.approx(1.0 + edge, rel=1e-6)
        assert p_value(edge, replicates, scheme) == pytest.approx(0.05, rel=1e-5)
        for shift in np.linspace(0, 4 * se, 41):
            d = difference(shift, replicates + shift, 0.0, torch.zeros(len(replicates)), scheme, sizes=(9, 9))
            assert (d.p_value < 0.05) == d.detected


def test_interval_ends_stay_in_the_scores_valid_range():
    """An FID near 0 and a recall near 1 with wide resamples: the ends are cut to [0, inf) and [0, 1]."""
    replicates = {"fid": torch.linspace(-0.5, 1.5, 200), "recall": torch.linspace(0.8, 1.2, 200), "nn_ratio": torch.linspace(-1, 3, 200)}
    out = scorecard.with_intervals({"fid": 0.05, "recall": 0.98, "nn_ratio": 1.0}, replicates, BOOTSTRAP)
    assert out["fid_ci_low"] == 0.0 and out["fid_ci_high"] > 0.05
    assert out["recall_ci_high"] == 1.0 and out["recall_ci_low"] < 0.98
    assert out["nn_ratio_ci_low"] < 0  # no metric bounds it: left alone


def test_the_gram_route_for_more_features_than_images_gives_the_same_fid():
    """D = 64 > N: frechet_low_rank against torch-fidelity on the sets themselves, and against the
    covariance route on random resamples."""
    rng = np.random.default_rng(40)
    x, y = torch.from_numpy(rng.standard_normal((30, 64))), torch.from_numpy(rng.standard_normal((45, 64)) * 1.2 + 0.1)
    assert rs.frechet_low_rank(x, y, all_ones(30), all_ones(45)).item() == pytest.approx(frechet_distance(x, y), rel=1e-6)
    resampler = Bootstrap(20, seed=0)
    w_g, w_r = resampler.counts("generated", 30), resampler.counts("test", 45)
    by_covariance = rs.frechet(rs.weighted_moments(x, w_g), rs.weighted_moments(y, w_r, with_sqrt=True))
    assert torch.allclose(rs.frechet_low_rank(x, y, w_g, w_r), by_covariance, rtol=1e-6)
    x, y = y, x  # more reference than generated images and the other way round take different Gram products
    w_g, w_r = resampler.counts("generated", 45), resampler.counts("test", 30)
    by_covariance = rs.frechet(rs.weighted_moments(x, w_g), rs.weighted_moments(y, w_r, with_sqrt=True))
    assert torch.allclose(rs.frechet_low_rank(x, y, w_g, w_r), by_covariance, rtol=1e-6)


def test_the_delete_one_jackknifes_bias_correction_of_the_plug_in_variance_is_the_unbiased_variance():
    """Quenouille's correction removes a bias of order 1 / n exactly when the bias is exactly that: the plug-in
    variance (divisor n, bias -sigma^2 / n) becomes the sample variance (divisor n - 1)."""
    values = np.random.default_rng(9).exponential(size=30)
    leave_outs = np.array([np.delete(values, i).var() for i in range(30)])
    assert Jackknife(30, seed=0).bias_corrected(values.var(), leave_outs) == pytest.approx(values.var(ddof=1), rel=1e-12)


def test_the_bias_corrected_fid_estimates_the_distance_itself():
    """FID at N = 200 per side is 1.5x the closed-form distance here; the corrected value's mean over 300 draws
    is within 3% of it, and its interval covers it in 93-99% of them (measured: 98.0%; binomial sd 1.3 points)."""
    closed_form = D * 0.25**2 + float(((np.linspace(1, 1.5, D) - 1) ** 2).sum())
    rng = np.random.default_rng(13)
    scheme, corrected, hits = Jackknife(GROUPS, seed=0), [], 0
    for r in range(300):
        x, y = two_gaussians(rng)
        jackknife = Jackknife(GROUPS, seed=r)
        replicates = resampled_fid(x, y, jackknife).numpy()
        value = jackknife.bias_corrected(frechet_distance(x, y), replicates)
        corrected.append(value)
        hits += interval(value, replicates, scheme).contains(closed_form)
    assert np.mean(corrected) == pytest.approx(closed_form, rel=0.03)
    assert 0.93 <= hits / 300 <= 0.99, hits / 300
