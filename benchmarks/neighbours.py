"""evaluate's neighbour work per run: ddpmlab's chunked k-NN against the all-pairs computation it replaced.

Before: precision / recall were torch-fidelity's ``prc_features_to_metric`` of the generated set
against a whole reference split of M images (save_cpu_ram=True, as evaluate called it): the M x M
distances of the reference's k-NN radii are recomputed for every run, O(M^2).
Now, per run: precision / recall of the n generated images against a cached n-subset's balls
(``Manifold``; equal sizes as in Kynkaanniemi et al. 2019), plus the memorisation check's nearest
training image of each generated image in feature and pixel space, O(n M). Once per data set
(then cached on disk): the held-out images' nearest-training distances, O(M_test M).

Both sides get the same synthetic float64 features (D = --dim, like the classifier's) and uint8
pixels (--pixels values per image, 784 = 28x28 Fashion-MNIST); M_test = M / 6 (Fashion-MNIST's
10,000 / 60,000). Each timing is the median of --rounds, alternating old and new. Prints seconds
per run, the ratio old / new, and the growth exponent of each between successive sizes
(t ~ M^exponent: 2 is quadratic, 1 linear).

    python benchmarks/neighbours.py                          # M = 2,500 / 10,000 / 60,000 (~10 min on 2 cores)
    python benchmarks/neighbours.py --sizes 1000,2000 --rounds 1   # smoke test
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from functools import partial

import click
import numpy as np
import torch
from torch_fidelity.metric_prc import prc_features_to_metric

from ddpmlab.evaluation import memorisation
from ddpmlab.evaluation.metrics import Manifold, precision_recall


def ours(features: torch.Tensor, pixels: np.ndarray, reference: Manifold, check: memorisation.Memorisation) -> None:
    """What evaluate now does per run: equal-size precision / recall and the nearest training image in both spaces."""
    precision_recall(Manifold.of(features), reference)
    check.score(check.nearest({"features": features, "pixels": memorisation.pixel_vectors(pixels)}))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@click.command(help=__doc__)
@click.option(
    "--sizes", default="2500,10000,60000", show_default=True, help="Comma-separated reference sizes M (training images)."
)
@click.option("--generated", default=500, show_default=True, help="Generated images per run (sample.num_samples).")
@click.option("--dim", default=128, show_default=True, help="Feature dimension (the classifier's is 128, Inception's 2048).")
@click.option("--pixels", default=784, show_default=True, help="Values per image for the pixel-space neighbours.")
@click.option("--rounds", default=3, show_default=True, help="Timed rounds per size; the median counts.")
@click.option(
    "--skip-old-above",
    default=60000,
    show_default=True,
    help="Leave the all-pairs side out above this M (its memory grows as 10,000 x M).",
)
def main(sizes: str, generated: int, dim: int, pixels: int, rounds: int, skip_old_above: int) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    click.echo(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
               f"n = {generated} generated, D = {dim}, {pixels} pixels; median of {rounds} rounds\n")  # fmt: skip
    gen_features = torch.randn(generated, dim, dtype=torch.float64)
    gen_pixels = rng.integers(0, 256, size=(generated, pixels, 1, 1), dtype=np.uint8)
    rows = []
    for m in (int(s) for s in sizes.split(",")):
        train_features = torch.randn(m, dim, dtype=torch.float64) * 1.1
        train_pixels = rng.integers(0, 256, size=(m, pixels, 1, 1), dtype=np.uint8)
        m_test = max(m // 6, generated)
        test_features, test_pixels = (
            torch.randn(m_test, dim, dtype=torch.float64),
            rng.integers(0, 256, size=(m_test, pixels, 1, 1), dtype=np.uint8),
        )

        once = timed(
            partial(memorisation.build, train_features, train_pixels, test_features, test_pixels)
        )  # the cached baselines
        check = memorisation.build(train_features, train_pixels, test_features, test_pixels)
        reference = Manifold.of(train_features[:generated])  # a cached subset's balls: built once
        new = partial(ours, gen_features, gen_pixels, reference, check)
        old = partial(
            prc_features_to_metric,
            gen_features,
            train_features,
            prc_neighborhood=3,
            prc_batch_size=10000,
            save_cpu_ram=True,
            verbose=False,
        )

        run_old = m <= skip_old_above
        new_times, old_times = [], []
        for r in range(rounds):
            for side in (old, new) if r % 2 == 0 else (new, old):
                if side is new:
                    new_times.append(timed(new))
                elif run_old:
                    old_times.append(timed(old))
        row = {
            "M": m,
            "old": statistics.median(old_times) if old_times else math.nan,
            "new": statistics.median(new_times),
            "once": once,
        }
        rows.append(row)
        click.echo(f"M = {m:>6}: all-pairs {row['old']:8.3f} s/run   chunked k-NN + memorisation {row['new']:7.3f} s/run   "
                   f"ratio {row['old'] / row['new']:7.1f}x   (once per data set: {once:.2f} s)")  # fmt: skip

    click.echo(
        "\n| M | all-pairs s/run | ours s/run | ratio | ours once per data set, s | growth all-pairs | growth ours |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for prev, row in zip([None, *rows], rows):
        growth = {
            k: f"M^{math.log(row[k] / prev[k]) / math.log(row['M'] / prev['M']):.2f}" if prev else "" for k in ("old", "new")
        }
        click.echo(
            f"| {row['M']:,} | {row['old']:.3f} | {row['new']:.3f} | {row['old'] / row['new']:.1f}x | {row['once']:.2f} | {growth['old']} | {growth['new']} |"
        )


if __name__ == "__main__":
    main()
