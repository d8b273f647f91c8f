"""What the bootstrap intervals add to evaluate's scoring, at the default sizes.

Peer in the same run: `Protocol.score` (the point estimates evaluate computed before intervals
existed) against `Protocol.score_resampled` (the same scores plus `evaluate.bootstrap` resamples
of each), for one real floor and 18 runs of 500 generated images against the digits splits'
sizes (359 test / 1,438 train), 128-d features and 10 logits, as the classifier extractor gives.
Random features stand in for extracted ones: the work does not depend on their values.
Prints seconds per run and the ratio. The whole evaluate stage also extracts features, samples the
snapshots and bounds the NLL, so its own overhead is smaller (docs/comparing.md measures it).

    python benchmarks/bootstrap.py [--resamples 200] [--runs 18]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddpmlab.evaluation.metrics import FeatureSet
from ddpmlab.evaluation.protocol import Protocol
from ddpmlab.evaluation.resampling import Bootstrap


def feature_set(n: int, generator: torch.Generator) -> FeatureSet:
    return FeatureSet(torch.randn(n, 128, generator=generator, dtype=torch.float64).relu(), torch.randn(n, 10, generator=generator, dtype=torch.float64) * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=18)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    references = {"test": feature_set(359, g), "train": feature_set(1438, g)}
    runs = [feature_set(500, g) for _ in range(args.runs)]
    timings = {}
    for name, resampler in (("point scores", None), (f"+ {args.resamples} resamples", Bootstrap(args.resamples, seed=0))):
        protocol = Protocol(references, kid_subset_size=100, isc_splits=10, seed=0, resampler=resampler)
        start = time.perf_counter()
        protocol.real_floor(500)
        for generated in runs:
            protocol.score_resampled(generated) if resampler else protocol.score(generated)
        timings[name] = time.perf_counter() - start
        print(f"{name:>20}: {timings[name]:6.2f} s for the floor and {args.runs} runs ({timings[name] / (args.runs + 1):.3f} s per set)")
    base, with_intervals = timings.values()
    print(f"ratio (with intervals / point scores): {with_intervals / base:.2f}x; torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
