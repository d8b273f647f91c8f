"""The memorisation check on real digits: copies of training images are caught, held-out images
score the 5% the threshold is built on, and images unrelated to the data score ~0."""

import numpy as np
import pytest
import torch

from ddpmlab.data.sources import load_digits, split
from ddpmlab.evaluation import memorisation
from ddpmlab.evaluation.feature_cache import FeatureCache

PROJECTION = torch.randn(64, 24, generator=torch.Generator().manual_seed(0))  # a fixed linear "extractor" of 8x8 digits


def features(images: np.ndarray) -> torch.Tensor:
    return memorisation.pixel_vectors(images) @ PROJECTION


@pytest.fixture(scope="module")
def digits():
    """Train 1,000 / test 398 / a second held-out set of 399 8x8 digits."""
    rest, held_out = split(load_digits(8, None).train, 0.2, seed=0)
    train, test = split(rest, 0.285, seed=1)
    return train.images, test.images, held_out.images


@pytest.fixture(scope="module")
def check(digits):
    train, test, _ = digits
    return memorisation.build(features(train), train, features(test), test)


def scores(check: memorisation.Memorisation, images: np.ndarray) -> tuple[dict, memorisation.Nearest]:
    nearest = check.nearest({"features": features(images), "pixels": memorisation.pixel_vectors(images)})
    return check.score(nearest), nearest


def test_exact_and_slightly_noised_copies_score_near_one(check, digits):
    train = digits[0]
    exact, _ = scores(check, train[:300])
    assert exact["copy_rate"] == exact["copy_rate_pixels"] == 1.0
    assert exact["nn_ratio"] < 1e-3 and exact["nn_ratio_pixels"] < 1e-3
    noise = np.random.default_rng(0).normal(0, 3, train[:300].shape)  # +-3 of 255 levels: invisible
    noised, _ = scores(check, np.clip(train[:300] + noise, 0, 255).round().astype(np.uint8))
    assert noised["copy_rate"] > 0.95 and noised["copy_rate_pixels"] > 0.95, noised


def test_held_out_images_score_the_five_percent_the_threshold_is_built_on(check, digits):
    assert check.floor()["copy_rate"] == pytest.approx(0.05, abs=0.005)  # the test set itself, by construction
    assert check.floor()["nn_ratio"] == 1.0
    held_out, _ = scores(check, digits[2])  # images neither set contains
    for space in ("", "_pixels"):
        assert 0.01 < held_out[f"copy_rate{space}"] < 0.12, held_out  # binomial std ~0.011 at 399 images
        assert 0.8 < held_out[f"nn_ratio{space}"] < 1.25, held_out


def test_images_unrelated_to_the_data_score_zero(check):
    noise = np.random.default_rng(1).integers(0, 256, size=(300, 1, 8, 8), dtype=np.uint8)
    unrelated, _ = scores(check, noise)
    assert unrelated["copy_rate"] == unrelated["copy_rate_pixels"] == 0.0
    assert unrelated["nn_ratio_pixels"] > 1.5


def test_the_panel_pairs_each_copy_with_its_source(check, digits):
    train, test, held_out = digits
    sources = np.array([5, 17, 230])
    mixed = np.concatenate([held_out[:40], train[sources]])  # three copies hidden among originals
    _, nearest = scores(check, mixed)
    summary = check.summary(nearest)
    closest = summary["closest"][:3]
    assert sorted(p["generated"] for p in closest) == [40, 41, 42]
    assert all(p["train"] == p["train_pixels"] == sources[p["generated"] - 40] and p["distance"] < 1e-4 for p in closest)
    histogram = summary["histograms"]["pixels"]
    assert sum(histogram["generated"]) == len(mixed) and sum(histogram["test"]) == len(test)
    assert len(histogram["edges"]) == memorisation.HISTOGRAM_BINS + 1


def test_test_baselines_are_cached_by_their_inputs_keys(digits, tmp_path, monkeypatch: pytest.MonkeyPatch):
    train, test, _ = digits
    calls = []
    original = memorisation.held_out_baselines
    monkeypatch.setattr(memorisation, "held_out_baselines", lambda *a: calls.append(1) or original(*a))
    store = FeatureCache(tmp_path)
    first = memorisation.build(features(train), train, features(test), test, store, {"train": "a", "test": "b"})
    again = memorisation.build(features(train), train, features(test), test, FeatureCache(tmp_path), {"train": "a", "test": "b"})
    assert len(calls) == 1 and torch.equal(first.baselines["pixels"].distances, again.baselines["pixels"].distances)
    memorisation.build(features(train), train, features(test), test, store, {"train": "a", "test": "other"})
    assert len(calls) == 2  # another test set: recomputed, never reused
