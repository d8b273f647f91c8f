"""The reference-feature cache: reused while content and extractor are the same, never after either changes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmlab.evaluation.feature_cache import CACHE_ENV, FeatureCache, content_key, default_cache_dir
from ddpmlab.evaluation.metrics import FeatureSet

IDENTITY = {"extractor": "classifier", "layers": ["features", "logits"], "weights_sha256": "ab" * 32, "torch_fidelity": "0.4.0"}


class CountingExtractor:
    """Mean pixel as the one feature: cheap, and it changes when any image changes."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images: np.ndarray) -> FeatureSet:
        self.calls += 1
        x = torch.from_numpy(images).double().flatten(1)
        return FeatureSet(x.mean(1, keepdim=True), x[:, :3])


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(20, 1, 8, 8), dtype=np.uint8)


def test_second_lookup_is_served_from_disk(tmp_path: Path, images: np.ndarray):
    extract = CountingExtractor()
    first, key = FeatureCache(tmp_path).features(images, IDENTITY, extract)
    cache = FeatureCache(tmp_path)  # a new process: only the files carry over
    again, same_key = cache.features(images.copy(), IDENTITY, extract)
    assert extract.calls == 1 and (cache.hits, cache.misses) == (1, 0) and same_key == key
    assert torch.equal(again.features, first.features) and torch.equal(again.logits, first.logits)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.pt"]  # no temporary file left behind


def test_changing_one_pixel_of_one_image_invalidates_the_entry(tmp_path: Path, images: np.ndarray):
    extract = CountingExtractor()
    cache = FeatureCache(tmp_path)
    before, key = cache.features(images, IDENTITY, extract)
    changed = images.copy()
    changed[7, 0, 3, 3] ^= 1
    after, other_key = cache.features(changed, IDENTITY, extract)
    assert other_key != key and extract.calls == 2
    differs = (after.features != before.features).flatten().nonzero().flatten().tolist()
    assert differs == [7]  # recomputed from the new content, not served stale


def test_other_weights_order_or_shape_never_reuse_an_entry(images: np.ndarray):
    key = content_key(images, IDENTITY)
    assert content_key(images, {**IDENTITY, "weights_sha256": "cd" * 32}) != key  # e.g. a retrained classifier
    assert content_key(images[::-1], IDENTITY) != key
    assert content_key(images.reshape(20, 1, 4, 16), IDENTITY) != key  # same bytes, other images
    assert content_key(images.copy(), dict(reversed(IDENTITY.items()))) == key  # dict order is not content


def test_an_entry_under_the_wrong_name_is_recomputed(tmp_path: Path, images: np.ndarray):
    extract = CountingExtractor()
    _, key = FeatureCache(tmp_path).features(images, IDENTITY, extract)
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    (tmp_path / f"{key}.pt").rename(tmp_path / f"{content_key(other, IDENTITY)}.pt")  # e.g. a copied cache folder
    result, _ = FeatureCache(tmp_path).features(other, IDENTITY, extract)
    assert extract.calls == 2 and result.features[0] != CountingExtractor()(images).features[0]


def test_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "features"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ddpmlab" / "features"
