"""FID, IS and KID through torch-fidelity, with the dataset classifier as feature extractor.

Tensors in, numbers out. Images are uint8 (N, C, H, W); torch-fidelity wants 3-channel
uint8, so grayscale is repeated to 3 channels and the extractor reads one back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ddpmlab import checkpoint
from ddpmlab.classifier import CHECKPOINT_KIND, DigitClassifier
from ddpmlab.data import to_model_range

EXTRACTOR = "ddpmlab-classifier"


class ClassifierFeatures(FeatureExtractorBase):
    """Penultimate features (FID, KID) and logits (IS) of a trained :class:`DigitClassifier`."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{EXTRACTOR} needs feature_extractor_weights_path (a classifier checkpoint)")
        payload = checkpoint.load(feature_extractor_weights_path, CHECKPOINT_KIND)
        self.net = DigitClassifier(payload["in_channels"], payload["num_classes"])
        self.net.load_state_dict(payload["model"])

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


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, ClassifierFeatures)


class UInt8RGB(torch.utils.data.Dataset):
    """(N, C, H, W) uint8 array -> items of (3, H, W) uint8 tensors, as torch-fidelity expects."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.images[i]
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def fidelity_metrics(
    candidate: np.ndarray,
    reference: np.ndarray,
    classifier_path: str | Path,
    *,
    kid_subset_size: int,
    batch_size: int,
    cuda: bool,
    seed: int,
) -> dict[str, float]:
    """FID, KID and precision / recall (Kynkaanniemi et al. 2019, k = 3 neighbourhoods) of
    ``candidate`` against ``reference``, and IS of ``candidate``.

    KID uses subsets of min(kid_subset_size, len(candidate), len(reference)) images.
    """
    result = torch_fidelity.calculate_metrics(
        input1=UInt8RGB(candidate),
        input2=UInt8RGB(reference),
        cuda=cuda,
        batch_size=batch_size,
        isc=True,
        fid=True,
        kid=True,
        prc=True,
        feature_extractor=EXTRACTOR,
        feature_extractor_weights_path=str(classifier_path),
        kid_subset_size=min(kid_subset_size, len(candidate), len(reference)),
        cache=False,
        save_cpu_ram=True,  # in-memory arrays: worker processes would only add start-up time
        rng_seed=seed,
        verbose=False,
    )
    return {
        "fid": float(result["frechet_inception_distance"]),
        "is_mean": float(result["inception_score_mean"]),
        "is_std": float(result["inception_score_std"]),
        "kid_mean": float(result["kernel_inception_distance_mean"]),
        "kid_std": float(result["kernel_inception_distance_std"]),
        "precision": float(result["precision"]),
        "recall": float(result["recall"]),
    }
