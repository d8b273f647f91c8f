"""Are the intervals as wide as the truth on real features? Fresh draws of one run against its replicates.

In a committed clone after `dvc repro`: draws S independent sets of N images from the trained
model with one run of the plan (new x_T seeds each time), scores each against the test split with
the evaluation's classifier features, and compares the sd of FID over the S draws (the true
sampling spread of the generated side; the reference split is fixed, as only one exists) with
what one set's replicates say about the same side: the jackknife's and the bootstrap's standard
errors with only the generated images replicated (the reference counted once).

    python benchmarks/interval_truth.py [--run dpmpp_2m-10] [--draws 12] [--images 500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ddpmlab.data.image_set import ImageSet
from ddpmlab.evaluation import resampled_scores as rs
from ddpmlab.evaluation.metrics import Extractor, frechet_distance
from ddpmlab.evaluation.resampling import Bootstrap, Jackknife, standard_error
from ddpmlab.model.draw import draw_images
from ddpmlab.model.trained import TrainedDiffusion
from ddpmlab.sampling.plan import Run
from ddpmlab.sampling.trajectory import image_seeds


def generated_only_se(features: torch.Tensor, reference: torch.Tensor, scheme) -> float:
    """The scheme's standard error of FID with the generated images replicated and the reference counted once."""
    counts = scheme.counts("generated", len(features))
    once = torch.ones(len(counts), len(reference), dtype=torch.float64)
    fids = rs.frechet(rs.weighted_moments(features, counts), rs.weighted_moments(reference, once, with_sqrt=True))
    return standard_error(fids.numpy(), scheme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="dpmpp_2m-10")
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    device = torch.device("cpu")
    trained = TrainedDiffusion.load(Path("models/ddpm/model.pt"), device)
    sampling = json.loads(Path("samples/sampling.json").read_text())
    run = Run.from_dict(next(entry for entry in sampling["runs"] if entry["key"] == args.run))
    network = trained.sampling_network("fp32", False, False, args.images, None)
    extractor = Extractor("classifier", Path("models/classifier.pt"), device, 500)
    reference = extractor(ImageSet.load(Path("data/prepared/test.npz")).images).features.double()
    fids, jack, boot = [], [], []
    start = time.perf_counter()
    for d in range(args.draws):
        images = draw_images(trained, network, run, image_seeds(10_000 + d, 0, args.images), None, clip_x0=True, batch_size=args.images, device=device)
        features = extractor(images).features.double()
        fids.append(frechet_distance(features, reference))
        jack.append(generated_only_se(features, reference, Jackknife(50, seed=d)))
        boot.append(generated_only_se(features, reference, Bootstrap(200, seed=d)))
        print(f"draw {d}: FID {fids[-1]:.3f}, jackknife se {jack[-1]:.3f}, bootstrap se {boot[-1]:.3f}", flush=True)
    sd = float(np.std(fids, ddof=1))
    print(f"{args.run}, {args.draws} draws of {args.images} images against the {len(reference)} test images ({time.perf_counter() - start:.0f} s):")
    print(f"  FID mean {np.mean(fids):.3f}, sd over draws {sd:.3f} (its own relative uncertainty about {1 / (2 * (args.draws - 1)) ** 0.5:.0%})")
    print(f"  jackknife se {np.mean(jack):.3f} ({np.mean(jack) / sd:.2f}x), bootstrap se {np.mean(boot):.3f} ({np.mean(boot) / sd:.2f}x)")


if __name__ == "__main__":
    main()
