"""Inception-v3 (inception-v3-compat): everything up to the real weights, which cannot be downloaded
on the machines we build on. A randomly initialised weights file in the real format stands in for
them, so loading, resizing 8x8 grayscale to 299x299 RGB and the metrics all run; the numbers
it gives mean nothing."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

from ddpmlab.evaluation import inception
from ddpmlab.evaluation.inception import WEIGHTS_FILENAME, InceptionWeightsUnavailable, resolve_weights
from ddpmlab.evaluation.metrics import Extractor
from ddpmlab.evaluation.protocol import Protocol


def test_url_and_file_name_are_torch_fidelitys():
    assert inception.WEIGHTS_URL == tf_inception.URL_INCEPTION_V3
    assert WEIGHTS_FILENAME == "weights-inception-2015-12-05-6726825d.pth"


def test_offline_without_the_file_names_the_file_where_to_put_it_and_the_alternative(offline: Path):
    with pytest.raises(InceptionWeightsUnavailable) as error:
        resolve_weights(None)
    message = str(error.value)
    for text in ("could not be downloaded", WEIGHTS_FILENAME, str(offline), "evaluate.inception_weights", "evaluate.feature_extractor=classifier"):
        assert text in message
    assert not [p for p in offline.iterdir() if p.suffix == ".partial"]  # a failed download leaves nothing


def test_a_configured_path_that_does_not_exist_is_named(offline: Path, tmp_path: Path):
    with pytest.raises(InceptionWeightsUnavailable, match=r"evaluate.inception_weights='.*nowhere.pth': no such file"):
        resolve_weights(str(tmp_path / "nowhere.pth"))


def test_configured_file_then_torch_home_are_used_without_network(offline: Path, random_inception_weights: Path):
    assert resolve_weights(str(random_inception_weights)) == random_inception_weights
    offline.mkdir(parents=True)
    (offline / WEIGHTS_FILENAME).write_bytes(random_inception_weights.read_bytes())
    assert resolve_weights(None) == offline / WEIGHTS_FILENAME


def test_inception_features_and_metrics_of_small_grayscale_images(random_inception_weights: Path):
    extractor = Extractor("inception-v3-compat", random_inception_weights, torch.device("cpu"), batch_size=16)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(24, 1, 8, 8), dtype=np.uint8)
    features = extractor(real)
    assert features.features.shape == (24, 2048) and features.logits.shape == (24, 1008)  # pool3, unbiased logits
    assert extractor.identity["extractor"] == "inception-v3-compat" and len(extractor.identity["weights_sha256"]) == 64
    other = extractor(rng.integers(0, 256, size=(16, 1, 8, 8), dtype=np.uint8))
    protocol = Protocol({"test": features, "train": other}, kid_subset_size=8, isc_splits=2, seed=0)
    scores = protocol.score(other)
    assert all(np.isfinite(v) for v in scores.values())
    assert scores["fid_train"] == pytest.approx(0.0, abs=1e-2) and scores["fid"] > 0  # rank-deficient covariances: FID ~ 0 only
