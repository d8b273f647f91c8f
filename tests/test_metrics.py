"""FID / KID through torch-fidelity with the dataset-classifier features: sanity properties
every trustworthy FID has, whatever the extractor (identity ~ 0, monotone in corruption)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmlab import checkpoint
from ddpmlab.classifier import CHECKPOINT_KIND, train_classifier
from ddpmlab.data import load_digits, split
from ddpmlab.metrics import fidelity_metrics


@pytest.fixture(scope="module")
def digits_and_classifier(tmp_path_factory: pytest.TempPathFactory):
    train, test = split(load_digits(8), 0.2, seed=0)
    result = train_classifier(train, test, epochs=15, batch_size=128, lr=1e-3, seed=0, device=torch.device("cpu"))
    assert result.test_accuracy > 0.85  # features of a classifier that fails its task would test nothing
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    payload = {"in_channels": 1, "num_classes": result.model.num_classes, "model": result.model.state_dict(), "test_accuracy": result.test_accuracy}
    checkpoint.save(payload, path, CHECKPOINT_KIND)
    return train, test, path


def metrics(candidate: np.ndarray, reference: np.ndarray, classifier: Path) -> dict[str, float]:
    return fidelity_metrics(candidate, reference, classifier, kid_subset_size=100, batch_size=256, cuda=False, seed=0)


def test_fid_of_a_set_against_itself_is_zero(digits_and_classifier):
    _, test, classifier = digits_and_classifier
    result = metrics(test.images, test.images, classifier)
    assert abs(result["fid"]) < 1e-3
    assert result["precision"] == result["recall"] == 1.0  # every point lies in its own k-NN ball
    # KID is an unbiased MMD estimate over random subsets: zero in expectation, not exactly.
    assert abs(result["kid_mean"]) < 2 * result["kid_std"]


def test_fid_and_kid_grow_with_the_strength_of_added_noise(digits_and_classifier):
    train, test, classifier = digits_and_classifier
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(train.images.shape)
    fids, kids = [], []
    for std in (0, 32, 64, 128):  # in uint8 levels; below ~20 the change is within sampling noise
        noisy = np.clip(train.images + std * noise, 0, 255).round().astype(np.uint8)
        result = metrics(noisy, test.images, classifier)
        fids.append(result["fid"])
        kids.append(result["kid_mean"])
    assert fids == sorted(fids) and fids[-1] > 10 * fids[0], fids  # measured: 0.53, 0.70, 2.96, 12.7
    assert kids[-1] > kids[0], kids
