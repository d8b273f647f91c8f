"""What the intervals and the exact test add to evaluate's scoring, at the default sizes.

Peers in the same run: `Protocol.score` (the point estimates alone) against
`Protocol.score_resampled` with the grouped jackknife (`evaluate.jackknife_groups`, evaluate's
method) and with the bootstrap it replaced, and the exact test against real data
(`fid_permutation_test`, 200 shuffles), for one real floor and 18 runs of 500 generated images
against the digits splits' sizes (359 test / 1,438 train), 128-d features and 10 logits, as the
classifier extractor gives. Random features stand in for extracted ones: the work does not depend
on their values. Prints seconds and the ratio to the point scores. The whole evaluate stage also
extracts features, samples the snapshots and bounds the NLL, so its own overhead is smaller.

    python benchmarks/interval_cost.py [--groups 50] [--resamples 200] [--runs 18]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddpmlab.evaluation.metrics import FeatureSet
from ddpmlab.evaluation.protocol import Protocol
from ddpmlab.evaluation.real_data_test import fid_permutation_test
from ddpmlab.evaluation.resampling import Bootstrap, Jackknife


def feature_set(n: int, generator: torch.Generator) -> FeatureSet:
    return FeatureSet(torch.randn(n, 128, generator=generator, dtype=torch.float64).relu(), torch.randn(n, 10, generator=generator, dtype=torch.float64) * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=18)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    references = {"test": feature_set(359, g), "train": feature_set(1438, g)}
    runs = [feature_set(500, g) for _ in range(args.runs)]
    timings = {}
    schemes = {"point scores": None, f"+ jackknife, {args.groups} groups": Jackknife(args.groups, seed=0),
               f"+ bootstrap, {args.resamples} resamples": Bootstrap(args.resamples, seed=0)}  # fmt: skip
    for name, scheme in schemes.items():
        protocol = Protocol(references, kid_subset_size=100, isc_splits=10, seed=0, resampler=scheme)
        start = time.perf_counter()
        protocol.real_floor(500)
        for generated in runs:
            protocol.score_resampled(generated) if scheme else protocol.score(generated)
        timings[name] = time.perf_counter() - start
    start = time.perf_counter()
    for generated in runs:
        fid_permutation_test(generated.features, references["test"].features)
    timings["exact test (200 shuffles)"] = time.perf_counter() - start
    base = timings["point scores"]
    for name, seconds in timings.items():
        print(f"{name:>32}: {seconds:6.2f} s for {'the floor and ' if name != 'exact test (200 shuffles)' else ''}{args.runs} runs "
              f"({seconds / base:.2f}x the point scores)")  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
