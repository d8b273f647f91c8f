"""FID, KID and IS with torch-fidelity's definitions, and precision / recall, on features extracted once per image set.

Images are uint8 (N, C, H, W). Each set goes through the feature extractor once
(:class:`Extractor`); FID and IS are torch-fidelity's own functions applied to those
features, and KID is its unbiased MMD^2 taken over every pair instead of random subsets, so a generated set's features serve both references (test and train split) and
a reference set's features come from a content-keyed cache (:mod:`ddpmlab.evaluation.feature_cache`).
Precision / recall use ddpmlab's chunked k-NN (:mod:`ddpmlab.evaluation.neighbours`) instead of
torch-fidelity's all-pairs matrices, with the same definition (tested equal), so the reference
balls can be computed once and reused by every run.
Extractors, by ``evaluate.feature_extractor``:

- ``inception-v3-compat``: torch-fidelity's TF-Inception port (pool3 2048-d features,
  unbiased logits), the one published FIDs use; images are resized to 299x299 inside it.
- ``classifier``: the dataset classifier's 128-d penultimate features and its logits;
  works offline and on tiny grayscale data, comparable only with itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from ddpmlab.data.image_set import to_model_range
from ddpmlab.evaluation import resampled_scores
from ddpmlab.evaluation.classifier import load_classifier
from ddpmlab.evaluation.neighbours import inside_any_ball, kth_neighbour_radii

CLASSIFIER_REGISTRY_NAME = "ddpmlab-classifier"
# evaluate.feature_extractor -> (torch-fidelity registry name, (FID/KID/PRC layer, IS layer))
EXTRACTORS = {
    "classifier": (CLASSIFIER_REGISTRY_NAME, ("features", "logits")),
    "inception-v3-compat": ("inception-v3-compat", ("2048", "logits_unbiased")),
}
KID_SUBSETS = 100  # torch-fidelity's default
PRC_NEIGHBORHOOD = 3  # k of the k-NN balls (Kynkaanniemi et al. 2019)


class ClassifierFeatures(FeatureExtractorBase):
    """Penultimate features (FID, KID, PRC) and logits (IS) of a trained :class:`DigitClassifier`."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{CLASSIFIER_REGISTRY_NAME} needs feature_extractor_weights_path (a classifier checkpoint)")
        self.net = load_classifier(feature_extractor_weights_path, torch.device("cpu"))

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = to_model_range(x[:, : self.net.in_channels])
        features, logits = self.net(x)
        by_name = {"features": features.double(), "logits": logits.double()}
        return tuple(by_name[name] for name in self.features_list)


if CLASSIFIER_REGISTRY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(CLASSIFIER_REGISTRY_NAME, ClassifierFeatures)


class UInt8RGB(torch.utils.data.Dataset):
    """(N, C, H, W) uint8 array -> items of (3, H, W) uint8 tensors, as torch-fidelity expects."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.images[i]
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image


@dataclass(frozen=True)
class FeatureSet:
    """One image set seen by one extractor: features (N, D) for FID / KID / PRC, logits (N, K) for IS."""

    features: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, index: np.ndarray) -> FeatureSet:
        index = torch.as_tensor(index)
        return FeatureSet(self.features[index], self.logits[index])


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Extractor:
    """A torch-fidelity feature extractor in eval mode; ``identity`` is what its features depend on."""

    def __init__(self, kind: str, weights: str | Path, device: torch.device, batch_size: int):
        if kind not in EXTRACTORS:
            raise ValueError(f"unknown feature extractor {kind!r}; allowed: {', '.join(EXTRACTORS)}")
        registry_name, self.layers = EXTRACTORS[kind]
        self.cuda = device.type == "cuda"
        self.batch_size = batch_size
        self.module = create_feature_extractor(
            registry_name, list(self.layers), cuda=self.cuda, feature_extractor_weights_path=str(weights), verbose=False
        )
        self.identity = {
            "extractor": kind,
            "layers": list(self.layers),
            "weights_sha256": sha256_file(weights),
            "torch_fidelity": torch_fidelity.__version__,  # Inception's resize and layers are versioned with it
        }

    def __call__(self, images: np.ndarray) -> FeatureSet:
        features = get_featuresdict_from_dataset(
            UInt8RGB(images), self.module, self.batch_size, self.cuda, save_cpu_ram=True, verbose=False
        )  # save_cpu_ram: in-memory arrays, worker processes would only add start-up time
        return FeatureSet(features[self.layers[0]], features[self.layers[1]])


def frechet_distance(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D) (Heusel et al. 2017, eq. 6), via torch-fidelity."""
    return float(fid_statistics_to_metric(fid_features_to_statistics(generated), fid_features_to_statistics(reference), verbose=False)["frechet_inception_distance"])


def compare(generated: FeatureSet, reference: FeatureSet, *, kid_subset_size: int, seed: int,
            reference_within: float | None = None) -> dict[str, float]:  # fmt: skip
    """FID and KID of ``generated`` (N images) against ``reference`` (M images).

    ``kid_mean`` is the unbiased MMD^2 over *every* pair (Binkowski et al. 2018, eq. 4): the
    U-statistic whose spread the jackknife interval describes, with the same expectation as
    torch-fidelity's mean over 100 random subsets and less variance. ``kid_std`` is torch-fidelity's
    std over 100 subsets of min(kid_subset_size, N, M) images: the +/- papers print next to KID,
    the spread of one subset's KID, not the standard error of ``kid_mean``.
    ``reference_within``: the reference's within-set kernel mean, when the caller keeps it (the
    O(M^2) part of KID, shared by every run scored against one reference).
    """
    everyone = torch.ones(1, len(generated))
    within_r = None if reference_within is None else torch.tensor([reference_within], dtype=torch.float64)
    kid_mean = resampled_scores.kid(generated.features, reference.features, everyone, torch.ones(1, len(reference)), within_r)
    spread = kid_features_to_metric(
        generated.features,
        reference.features,
        kid_subsets=KID_SUBSETS,
        kid_subset_size=min(kid_subset_size, len(generated), len(reference)),
        rng_seed=seed,
        verbose=False,
    )
    return {
        "fid": frechet_distance(generated.features, reference.features),
        "kid_mean": float(kid_mean[0]),
        "kid_std": float(spread["kernel_inception_distance_std"]),
    }


def kid_within(reference: FeatureSet) -> float:
    """The reference's term of KID's U-statistic (mean kernel over pairs of different images), for :func:`compare`."""
    return float(resampled_scores.within_mean(reference.features, torch.ones(1, len(reference)))[0])


@dataclass(frozen=True)
class Manifold:
    """A set's features (n, D) and the radii (n,) of their k-NN balls, k = PRC_NEIGHBORHOOD: the
    support estimate of Kynkaanniemi et al. 2019 (the union of the balls)."""

    features: torch.Tensor
    radii: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor, device: torch.device | None = None) -> Manifold:
        return cls(features, kth_neighbour_radii(features, PRC_NEIGHBORHOOD, device=device))


def membership(generated: Manifold, real: Manifold, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(each generated point inside the real manifold (n,), each real point inside the generated one (m,)), bool."""
    return (
        inside_any_ball(generated.features, real.features, real.radii, device=device),
        inside_any_ball(real.features, generated.features, generated.radii, device=device),
    )


def precision_recall(generated: Manifold, real: Manifold, device: torch.device | None = None) -> dict[str, float]:
    """Precision: the fraction of generated points inside the real manifold; recall: the fraction
    of real points inside the generated one (Kynkaanniemi et al. 2019, eq. 1-2). The paper uses
    equally many points on both sides; :class:`ddpmlab.evaluation.protocol.Protocol` sees to that."""
    inside_real, inside_generated = membership(generated, real, device)
    return {"precision": float(inside_real.double().mean()), "recall": float(inside_generated.double().mean())}


def inception_score(images: FeatureSet, *, splits: int, seed: int) -> dict[str, float]:
    """IS = exp E_x KL(p(y|x) || p(y)), mean and std over ``splits`` disjoint splits (p(y) per split)."""
    result = isc_features_to_metric(images.logits, splits=min(splits, len(images)), rng_seed=seed)
    return {"is_mean": float(result["inception_score_mean"]), "is_std": float(result["inception_score_std"])}
