"""Sample-quality metrics: sanity properties every trustworthy FID has whatever the extractor
(identity ~ 0, monotone in corruption), IS against closed forms, agreement with torch-fidelity's
own one-call pipeline, and the protocol's real-data floors."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity

from ddpmlab.data.sources import load_digits, split
from ddpmlab.evaluation.classifier import CHECKPOINT_KIND, train_classifier
from ddpmlab.evaluation.feature_cache import FeatureCache
from ddpmlab.evaluation.metrics import (
    CLASSIFIER_REGISTRY_NAME,
    Extractor,
    FeatureSet,
    Manifold,
    UInt8RGB,
    compare,
    inception_score,
    precision_recall,
)
from ddpmlab.evaluation.protocol import Protocol
from ddpmlab.model import checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_and_classifier(tmp_path_factory: pytest.TempPathFactory):
    """8x8 digits and a classifier trained with params.yaml's classifier settings (~15 s)."""
    train, test = split(load_digits(8, None).train, 0.2, seed=0)
    result = train_classifier(train, test, steps=1200, batch_size=128, lr=3e-3, seed=0, device=CPU)
    assert result.test_accuracy > 0.97  # features of a classifier that fails its task would test nothing
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    payload = {"in_channels": 1, "num_classes": result.model.num_classes, "model": result.model.state_dict(), "test_accuracy": result.test_accuracy}
    checkpoint.save(payload, path, CHECKPOINT_KIND)
    return train, test, Extractor("classifier", path, CPU, batch_size=256), path


def test_fid_of_a_set_against_itself_is_zero(digits_and_classifier):
    _, test, extractor, _ = digits_and_classifier
    features = extractor(test.images)
    result = compare(features, features, kid_subset_size=100, seed=0)
    assert abs(result["fid"]) < 1e-3
    manifold = Manifold.of(features.features)
    assert precision_recall(manifold, manifold) == {"precision": 1.0, "recall": 1.0}  # every point lies in its own k-NN ball
    # KID's U-statistic leaves out i = j within a set but not across sets, so a set against itself gives
    # 2 (mean over pairs i != j of k - mean of k(x_i, x_i)) / N: below 0, not 0.
    x = features.features.numpy()
    k = ((x @ x.T) / x.shape[1] + 1) ** 3
    n = len(x)
    assert result["kid_mean"] == pytest.approx(2 * ((k.sum() - np.trace(k)) / (n * (n - 1)) - np.trace(k) / n) / n, rel=1e-9)


def test_fid_and_kid_grow_with_the_strength_of_added_noise(digits_and_classifier):
    train, test, extractor, _ = digits_and_classifier
    reference = extractor(test.images)
    noise = np.random.default_rng(0).standard_normal(train.images.shape)
    fids, kids = [], []
    for std in (0, 32, 64, 128):  # in uint8 levels; below ~20 the change is within sampling noise
        noisy = np.clip(train.images + std * noise, 0, 255).round().astype(np.uint8)
        result = compare(extractor(noisy), reference, kid_subset_size=100, seed=0)
        fids.append(result["fid"])
        kids.append(result["kid_mean"])
    assert fids == sorted(fids) and fids[-1] > 10 * fids[0], fids
    assert kids == sorted(kids), kids


def test_inception_score_of_real_test_digits_is_close_to_the_number_of_classes(digits_and_classifier):
    _, test, extractor, _ = digits_and_classifier
    features = extractor(test.images)
    whole = inception_score(features, splits=1, seed=0)["is_mean"]
    assert 9.0 < whole <= 10.0, whole  # 10 balanced classes, confident and mostly right predictions
    # With 10 splits p(y) is estimated from 36 images each: the marginal's entropy, hence IS, is biased low.
    assert inception_score(features, splits=10, seed=0)["is_mean"] < whole


def test_inception_score_matches_closed_forms():
    labels = torch.arange(1000) % 4
    confident = FeatureSet(torch.zeros(1000, 2), 60.0 * torch.nn.functional.one_hot(labels, 4).double())
    assert inception_score(confident, splits=1, seed=0)["is_mean"] == pytest.approx(4.0, rel=1e-6)  # exp H(p(y)), p(y) uniform
    skewed = FeatureSet(torch.zeros(1000, 2), 60.0 * torch.nn.functional.one_hot((labels > 0).long(), 2).double())
    p = np.array([0.25, 0.75])
    assert inception_score(skewed, splits=1, seed=0)["is_mean"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    uninformative = FeatureSet(torch.zeros(1000, 2), torch.zeros(1000, 4, dtype=torch.float64))
    assert inception_score(uninformative, splits=10, seed=0) == {"is_mean": pytest.approx(1.0), "is_std": pytest.approx(0.0, abs=1e-12)}


def test_metrics_equal_torch_fidelitys_one_call_pipeline(digits_and_classifier):
    train, test, extractor, path = digits_and_classifier
    candidate = train.images[:300]
    generated, reference = extractor(candidate), extractor(test.images)
    ours = {**compare(generated, reference, kid_subset_size=100, seed=3), **inception_score(generated, splits=10, seed=3),
            **precision_recall(Manifold.of(generated.features), Manifold.of(reference.features))}  # fmt: skip
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8RGB(candidate), input2=UInt8RGB(test.images), cuda=False, isc=True, fid=True, kid=True, prc=True,
        feature_extractor=CLASSIFIER_REGISTRY_NAME, feature_extractor_weights_path=str(path), kid_subset_size=100,
        rng_seed=3, save_cpu_ram=True, cache=False, verbose=False,
    )  # fmt: skip
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9)
    # KID over every pair, from its definition (Binkowski et al. 2018, eq. 4), torch-fidelity's kernel (x.y / D + 1)^3:
    x, y = generated.features.numpy(), reference.features.numpy()
    n, m, d = len(x), len(y), x.shape[1]
    k_xx, k_yy, k_xy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    unbiased = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1)) + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - 2 * k_xy.mean()
    assert ours["kid_mean"] == pytest.approx(unbiased, rel=1e-9)
    # ... with the expectation of torch-fidelity's subset mean: within a few of that mean's standard errors
    assert abs(ours["kid_mean"] - theirs["kernel_inception_distance_mean"]) < 3 * theirs["kernel_inception_distance_std"] / 10
    assert ours["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=1e-6)


def test_protocol_scores_against_both_splits_and_floors_never_compare_a_set_with_itself(digits_and_classifier):
    train, test, extractor, _ = digits_and_classifier
    references = {"test": extractor(test.images), "train": extractor(train.images)}
    protocol = Protocol(references, kid_subset_size=100, isc_splits=10, seed=0)
    floor, counts, _ = protocol.real_floor(500)
    assert counts == {"test": 500, "train": len(test)}  # the test split has only 359 images to offer
    assert floor["fid"] > 0.05 and floor["fid_train"] > 0.05  # a set against itself would give ~0
    scored = protocol.score(references["train"])  # the training split scored as if it were generated
    assert scored["fid_train"] == pytest.approx(0.0, abs=1e-3) and scored["precision_train"] == 1.0
    assert scored["fid"] > 0.05
    assert set(scored) == {"is_mean", "is_std"} | {f"{m}{s}" for m in ("fid", "kid_mean", "kid_std", "precision", "recall") for s in ("", "_train")}


def test_extractor_identity_names_the_weights(digits_and_classifier, tmp_path: Path):
    *_, extractor, path = digits_and_classifier
    copy = tmp_path / "same.pt"
    copy.write_bytes(path.read_bytes())
    assert Extractor("classifier", copy, CPU, batch_size=8).identity == extractor.identity
    with pytest.raises(ValueError, match="unknown feature extractor 'vgg'; allowed: classifier, inception-v3-compat"):
        Extractor("vgg", path, CPU, batch_size=8)


def test_precision_recall_compare_equally_many_points_with_radii_computed_once(digits_and_classifier, tmp_path: Path):
    train, test, extractor, _ = digits_and_classifier
    references = {"test": extractor(test.images), "train": extractor(train.images)}
    keys = {"test": "t" * 64, "train": "r" * 64}
    protocol = Protocol(references, kid_subset_size=100, isc_splits=10, seed=0, reference_keys=keys, store=FeatureCache(tmp_path))
    generated = references["train"].subset(np.arange(200))
    scored = protocol.score(generated)
    subset = protocol.prc_subset("train", 200)
    assert len(subset) == len(set(subset)) == 200 and set(protocol.prc_subset("train", 100)) <= set(subset)  # nested
    expected = precision_recall(Manifold.of(generated.features), Manifold.of(references["train"].features[subset]))
    assert (scored["precision_train"], scored["recall_train"]) == (expected["precision"], expected["recall"])
    # against the 359 test images too: 200 on each side
    assert protocol.manifold("test", 200).features.shape[0] == 200
    again = Protocol(references, kid_subset_size=100, isc_splits=10, seed=0, reference_keys=keys, store=FeatureCache(tmp_path))
    again.score(generated)
    assert again.store.derived_hits == 2 and again.store.derived_misses == 0  # both splits' radii came from the disk cache
    torch.testing.assert_close(again.manifold("train", 200).radii, protocol.manifold("train", 200).radii, rtol=0, atol=0)
