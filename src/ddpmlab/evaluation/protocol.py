"""The sample-quality protocol: reference features per split, real-data floors, and the metrics of one set.

Every generated set is compared with both splits, as the DDPM paper reports both (CIFAR-10
FID 3.17 against the training set, 5.24 against the test set). Names without a suffix are
against the test split, ``*_train`` against the training split; IS needs no reference.
The floor is what real images score under the same protocol: N training images against the
test split and up to N test images against the training split (a set is never compared with
itself), so every generated number can be read against it.

Precision / recall compare equally many points on both sides, as Kynkaanniemi et al. 2019 do:
a set of n images against a seeded subset of n reference images (the first n of one fixed
permutation per split, so subsets of different sizes are nested). Each subset's k-NN radii are
computed once and, given a ``store`` (:class:`ddpmlab.evaluation.feature_cache.FeatureCache`), cached on
disk by the reference's content key.

Given a :class:`ddpmlab.evaluation.resampling.Resampler` (a grouped jackknife in the pipeline),
every score also comes with its replicates (:meth:`Protocol.score_resampled`). FID and KID
replicate the generated images and the reference split together (replicate k leaves out group k
of each); IS the generated images; precision the generated points and recall the reference
subset's points, each with the other side's k-NN balls held fixed (the support estimate is not
recomputed per replicate). Generated sets of equal size get the same groups, so two runs'
replicates are paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ddpmlab.evaluation import resampled_scores
from ddpmlab.evaluation.metrics import (
    KID_SUBSETS,
    PRC_NEIGHBORHOOD,
    FeatureSet,
    Manifold,
    compare,
    frechet_distance,
    inception_score,
    kid_within,
    membership,
)
from ddpmlab.evaluation.resampling import Resampler

SPLITS = ("test", "train")  # the first is the headline reference


def suffix(split: str) -> str:
    return "" if split == SPLITS[0] else f"_{split}"


@dataclass(frozen=True)
class Protocol:
    references: dict[str, FeatureSet]  # split -> features of all its images (un-augmented)
    kid_subset_size: int
    isc_splits: int
    seed: int
    reference_keys: dict[str, str] | None = None  # split -> content key: names cached radii in ``store``
    store: object | None = None  # anything with FeatureCache.derived(recipe, compute)
    device: torch.device | None = None  # where the k-NN work runs
    resampler: Resampler | None = None  # replicates for score_resampled / real_floor
    _manifolds: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _resampled_references: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _kid_within: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # split -> KID's reference term

    def __post_init__(self) -> None:
        if set(self.references) != set(SPLITS):
            raise ValueError(f"references must be given for {SPLITS}, got {sorted(self.references)}")

    def score(self, generated: FeatureSet) -> dict[str, float]:
        """IS of ``generated`` and its FID / KID / precision / recall against every split."""
        return self._score(generated, {split: generated for split in SPLITS})[0]

    def score_resampled(self, generated: FeatureSet) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(scores, score name -> its replicates (R,)); needs a ``resampler``."""
        return self._score(generated, {split: generated for split in SPLITS}, resampled=True)

    def real_floor(self, num_images: int) -> tuple[dict[str, float], dict[str, int], dict[str, torch.Tensor]]:
        """(metrics of real images scored like a generated set of ``num_images``, images used per
        reference, their replicates: empty without a ``resampler``).

        Against the test split: ``num_images`` training images (IS is theirs); against the
        training split: min(num_images, test size) test images.
        """
        rng = np.random.default_rng(self.seed)
        baseline = {}
        for reference, other in (("test", "train"), ("train", "test")):
            pool = self.references[other]
            baseline[reference] = pool.subset(rng.choice(len(pool), size=min(num_images, len(pool)), replace=False))
        scores, replicates = self._score(baseline[SPLITS[0]], baseline, resampled=self.resampler is not None, role="floor")
        return scores, {split: len(baseline[split]) for split in SPLITS}, replicates

    def prc_subset(self, split: str, n: int) -> np.ndarray:
        """Indices of the n reference images precision / recall compare a set of n with (n <= split size)."""
        return np.random.default_rng([self.seed, SPLITS.index(split)]).permutation(len(self.references[split]))[:n]

    def manifold(self, split: str, n: int) -> Manifold:
        """The k-NN balls of ``prc_subset(split, n)``: computed once per (split, n), cached in ``store``."""
        if (split, n) not in self._manifolds:
            features = self.references[split].features[torch.as_tensor(self.prc_subset(split, n))]
            recipe = {
                "radii_of": (self.reference_keys or {}).get(split),
                "subset_seed": [self.seed, SPLITS.index(split)],
                "n": n,
                "k": PRC_NEIGHBORHOOD,
            }
            if self.store is None or recipe["radii_of"] is None:
                radii = Manifold.of(features, self.device).radii
            else:
                radii = self.store.derived(recipe, lambda: {"radii": Manifold.of(features, self.device).radii})["radii"]
            self._manifolds[split, n] = Manifold(features, radii)
        return self._manifolds[split, n]

    def _score(self, for_is: FeatureSet, candidates: dict[str, FeatureSet], resampled: bool = False,
               role: str = "generated") -> tuple[dict[str, float], dict[str, torch.Tensor]]:  # fmt: skip
        """role: whose resample draws the scored images take ("generated": shared by every run; "floor": the real images' own)."""
        out = inception_score(for_is, splits=self.isc_splits, seed=self.seed)
        replicates = {}
        if resampled:
            # In the order the point estimate's seeded shuffle puts the images, so that leaving out a group
            # moves the split boundaries by a few images and does not reshuffle every split.
            rank = torch.from_numpy(np.argsort(np.random.RandomState(self.seed).permutation(len(for_is))))
            indices = [index[torch.argsort(rank[index], stable=True)] for index in self.resampler.indices(role, len(for_is))]
            replicates["is_mean"] = resampled_scores.inception_score(for_is.logits, indices, min(self.isc_splits, len(for_is)))
        for split in SPLITS:
            generated, reference = candidates[split], self.references[split]
            if split not in self._kid_within:
                self._kid_within[split] = kid_within(reference)
            against = compare(generated, reference, kid_subset_size=self.kid_subset_size, seed=self.seed,
                              reference_within=self._kid_within[split])  # fmt: skip
            n = min(len(generated), len(reference))  # equal sizes; generated images are seed-indexed, so the first n are a fair subset
            inside_real, inside_generated = membership(Manifold.of(generated.features[:n], self.device), self.manifold(split, n), self.device)
            against.update(precision=float(inside_real.double().mean()), recall=float(inside_generated.double().mean()))
            out.update({f"{name}{suffix(split)}": value for name, value in against.items()})
            if resampled:
                got = self._replicates(split, generated, inside_real, inside_generated, role)
                # Its interval: the same standard error around the corrected value (scorecard.with_intervals).
                got["fid_inf"] = got["fid"]
                out[f"fid_inf{suffix(split)}"] = self.resampler.bias_corrected(against["fid"], got["fid"].numpy())
                replicates.update({f"{name}{suffix(split)}": value for name, value in got.items()})
        return out, replicates

    def _replicates(self, split: str, generated: FeatureSet, inside_real: torch.Tensor, inside_generated: torch.Tensor,
                    role: str) -> dict[str, torch.Tensor]:  # fmt: skip
        """FID, KID, precision and recall of ``generated`` against ``split`` on every resample."""
        resample = self.resampler
        reference = self._resampled_reference(split)
        counts = resample.counts(role, len(generated))
        features = generated.features
        if features.shape[1] > len(features):  # more features than images: Gram matrices are the smaller work
            fid = resampled_scores.frechet_low_rank(features, reference["features"], counts, reference["counts"])
        else:
            fid = resampled_scores.frechet(resampled_scores.weighted_moments(features, counts), self._reference_moments(split))
        n = len(inside_real)
        return {
            "fid": fid,
            "kid_mean": resampled_scores.kid(features, reference["features"], counts, reference["counts"], reference["within"]),
            "precision": resampled_scores.proportion(inside_real, resample.counts(role, n)),
            "recall": resampled_scores.proportion(inside_generated, resample.counts(f"{split}-subset", n)),
        }

    def _resampled_reference(self, split: str) -> dict:
        """A split's features, resample counts and KID within-set term: once per split, shared by every run."""
        if split not in self._resampled_references:
            features = self.references[split].features
            counts = self.resampler.counts(split, len(features))
            self._resampled_references[split] = {
                "features": features,
                "counts": counts,
                "within": resampled_scores.within_mean(features, counts),
            }
        return self._resampled_references[split]

    def _reference_moments(self, split: str) -> resampled_scores.ResampledMoments:
        """A split's resampled means, covariances and their square roots (D x D each): once per split."""
        reference = self._resampled_reference(split)
        if "moments" not in reference:
            reference["moments"] = resampled_scores.weighted_moments(reference["features"], reference["counts"], with_sqrt=True)
        return reference["moments"]


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
        "intervals": {"method": "grouped jackknife", "groups": cfg.jackknife_groups, "level": 0.95,
                      "interval": "estimate +- t(groups - 1) * jackknife standard error",
                      "replicated": "replicate k leaves out group k of the generated and of the reference images; the same groups in every run: paired"},
        "prc_neighborhood": PRC_NEIGHBORHOOD,
        "prc_images": {split: min(num_generated, reference_images[split]) for split in SPLITS},  # per side; subset seed [seed, split index]
        "checkpoint_step": sampling["checkpoint_step"],
        "weights": sampling["weights"],
        "model_mode": sampling["model_mode"],
    }
