"""The sample-quality protocol: reference features per split, real-data floors, and the metrics of one set.

Every generated set is compared with both splits, as the DDPM paper reports both (CIFAR-10
FID 3.17 against the training set, 5.24 against the test set). Names without a suffix are
against the test split, ``*_train`` against the training split; IS needs no reference.
The floor is what real images score under the same protocol: N training images against the
test split and up to N test images against the training split (a set is never compared with
itself), so every generated number can be read against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpmlab.metrics import KID_SUBSETS, PRC_NEIGHBORHOOD, FeatureSet, compare, frechet_distance, inception_score

SPLITS = ("test", "train")  # the first is the headline reference


def suffix(split: str) -> str:
    return "" if split == SPLITS[0] else f"_{split}"


@dataclass(frozen=True)
class Protocol:
    references: dict[str, FeatureSet]  # split -> features of all its images (un-augmented)
    kid_subset_size: int
    isc_splits: int
    seed: int

    def __post_init__(self) -> None:
        if set(self.references) != set(SPLITS):
            raise ValueError(f"references must be given for {SPLITS}, got {sorted(self.references)}")

    def score(self, generated: FeatureSet) -> dict[str, float]:
        """IS of ``generated`` and its FID / KID / precision / recall against every split."""
        return self._score(generated, {split: generated for split in SPLITS})

    def real_floor(self, num_images: int) -> tuple[dict[str, float], dict[str, int]]:
        """(metrics of real images scored like a generated set of ``num_images``, images used per reference).

        Against the test split: ``num_images`` training images (IS is theirs); against the
        training split: min(num_images, test size) test images.
        """
        rng = np.random.default_rng(self.seed)
        baseline = {}
        for reference, other in (("test", "train"), ("train", "test")):
            pool = self.references[other]
            baseline[reference] = pool.subset(rng.choice(len(pool), size=min(num_images, len(pool)), replace=False))
        return self._score(baseline[SPLITS[0]], baseline), {split: len(baseline[split]) for split in SPLITS}

    def _score(self, for_is: FeatureSet, candidates: dict[str, FeatureSet]) -> dict[str, float]:
        out = inception_score(for_is, splits=self.isc_splits, seed=self.seed)
        for split in SPLITS:
            against = compare(candidates[split], self.references[split], kid_subset_size=self.kid_subset_size, seed=self.seed)
            out.update({f"{name}{suffix(split)}": value for name, value in against.items()})
        return out


# Per-class FID needs this many images on each side: below it the covariance estimate is too poor to rank anything.
MIN_PER_CLASS = 50


def per_class_fid(generated: FeatureSet, labels: np.ndarray, reference: FeatureSet, reference_labels: np.ndarray) -> dict[str, float] | None:
    """FID of the images asked to be class c against the reference images of class c, for every c;
    None when some class has fewer than MIN_PER_CLASS images on either side."""
    classes = np.unique(reference_labels)
    counts = [(int((labels == c).sum()), int((reference_labels == c).sum())) for c in classes]
    if min(min(pair) for pair in counts) < MIN_PER_CLASS:
        return None
    return {
        str(c): frechet_distance(generated.subset(np.flatnonzero(labels == c)).features, reference.subset(np.flatnonzero(reference_labels == c)).features)
        for c in classes
    }


def protocol_record(params, weights_sha256: str, num_generated: int, num_real: dict, reference_images: dict, reference_keys: dict, sampling: dict) -> dict:
    """Everything a score depends on besides the images: what makes two evaluations comparable."""
    cfg = params.evaluate
    return {
        "feature_extractor": cfg.feature_extractor,
        "extractor_weights_sha256": weights_sha256,
        "num_generated": num_generated,
        "num_real": num_real,
        "reference_images": reference_images,
        "reference_keys": {split: key[:16] for split, key in reference_keys.items()},
        "reference_augmented": False,
        "seed": params.seed,
        "sample_seed": params.sample.seed,
        "kid_subset_size": min(cfg.kid_subset_size, num_generated, *num_real.values()),
        "kid_subsets": KID_SUBSETS,
        "isc_splits": cfg.isc_splits,
        "prc_neighborhood": PRC_NEIGHBORHOOD,
        "checkpoint_step": sampling["checkpoint_step"],
        "weights": sampling["weights"],
        "model_mode": sampling["model_mode"],
    }
