"""Which interval method for FID: coverage and width of each, measured on Gaussians with known answers.

For each cell (feature dimension D, generated images N, reference images M, a real gap or identical
distributions) it draws R independent pairs of sets, scores each, and compares every method's
95% interval and standard error with what the repetitions show:

- coverage: the share of intervals that contain E[FID at N] (the mean over the R estimates);
- width: the method's mean standard error / the sd of the R estimates (1.0 is the ideal; an
  interval 1.3x too wide needs 1.7x the images to resolve the same difference);
- for the jackknife's bias-corrected value FID_inf = G * FID - (G - 1) * mean(leave-outs), its
  mean against the closed-form Frechet distance of the two Gaussians and its coverage of it.

Methods: the bootstrap's percentile interval recentred on the estimate (evaluate's method before
issue 39), the bootstrap's standard error, the grouped jackknife (G groups; evaluate's method now),
and the delta method (first-order influence of each image on FID; analytic, no replicates).

    python benchmarks/interval_methods.py [--repetitions 100] [--resamples 100] [--groups 50] [--cells all|quick]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from scipy import stats

from ddpmlab.evaluation import resampled_scores as rs
from ddpmlab.evaluation.resampling import Bootstrap, Jackknife, standard_error


def spectrum(d: int) -> torch.Tensor:
    """Per-dimension variances falling from 1.5 to 0.2, as features' principal variances fall."""
    return torch.linspace(1.5, 0.2, d, dtype=torch.float64)


def draw(gen: torch.Generator, d: int, n: int, m: int, gap: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated (n, d) and reference (m, d); with a gap the generated mean moves 0.2 per dimension and its sd 1.2x."""
    lam = spectrum(d).sqrt()
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * lam * (1.2 if gap else 1.0) + (0.2 if gap else 0.0)
    return x, torch.randn(m, d, generator=gen, dtype=torch.float64) * lam


def closed_form(d: int, gap: bool) -> float:
    """Frechet distance of the two Gaussians (diagonal covariances): ||mu||^2 + sum (sigma_g - sigma_r)^2."""
    lam = spectrum(d)
    return float(d * 0.04 + ((1.2 * lam.sqrt() - lam.sqrt()) ** 2).sum()) if gap else 0.0


def replicated(x: torch.Tensor, y: torch.Tensor, scheme) -> np.ndarray:
    return rs.frechet(rs.weighted_moments(x, scheme.counts("generated", len(x))), rs.weighted_moments(y, scheme.counts("test", len(y)), with_sqrt=True)).numpy()


def fid(x: torch.Tensor, y: torch.Tensor) -> float:
    ones_x, ones_y = torch.ones(1, len(x), dtype=torch.float64), torch.ones(1, len(y), dtype=torch.float64)
    return rs.frechet(rs.weighted_moments(x, ones_x), rs.weighted_moments(y, ones_y, with_sqrt=True)).item()


def _power(matrix: torch.Tensor, p: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(1e-12) ** p) @ vectors.T


def delta_se(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID's first-order standard error. With T = S_r^1/2 (S_r^1/2 S_g S_r^1/2)^-1/2 S_r^1/2 (the optimal
    transport map from the generated Gaussian to the reference one), an image's influence is
    2 (mu_g - mu_r).(x - mu_g) + (x - mu_g)^T (I - T) (x - mu_g) for a generated image and the same
    with -(mu_g - mu_r) and I - T^-1 for a reference image; se^2 = Var(influence_g) / N + Var(influence_r) / M."""
    mu_g, mu_r, s_g, s_r = x.mean(0), y.mean(0), torch.cov(x.T), torch.cov(y.T)
    root = _power(s_r, 0.5)
    transport = root @ _power(root @ s_g @ root, -0.5) @ root
    eye, gap = torch.eye(x.shape[1], dtype=torch.float64), mu_g - mu_r
    xc, yc = x - mu_g, y - mu_r
    influence_g = 2 * xc @ gap + ((xc @ (eye - transport)) * xc).sum(1)
    influence_r = -2 * yc @ gap + ((yc @ (eye - torch.linalg.inv(transport))) * yc).sum(1)
    return float((influence_g.var() / len(x) + influence_r.var() / len(y)).sqrt())


def cell(d: int, n: int, m: int, gap: bool, repetitions: int, resamples: int, groups: int) -> dict:
    gen = torch.Generator().manual_seed(1000 * d + n + m + gap)
    z_jack = stats.t.ppf(0.975, groups - 1)
    estimates, rows = [], []
    for r in range(repetitions):
        x, y = draw(gen, d, n, m, gap)
        est = fid(x, y)
        boot, jack = Bootstrap(resamples, seed=r), Jackknife(groups, seed=r)
        b, j = replicated(x, y, boot), replicated(x, y, jack)
        estimates.append(est)
        rows.append({"est": est, "boot": b, "boot_se": standard_error(b, boot), "jack_se": standard_error(j, jack),
                     "jack_inf": groups * est - (groups - 1) * j.mean(), "delta_se": delta_se(x, y)})  # fmt: skip
    estimates = np.array(estimates)
    target, sd, infinite = estimates.mean(), estimates.std(ddof=1), closed_form(d, gap)

    def covered(low, high, value=target) -> bool:
        return low <= value <= high

    percentile = [np.quantile(row["boot"] - np.median(row["boot"]) + row["est"], [0.025, 0.975]) for row in rows]
    out = {
        "bootstrap percentile": (np.mean([covered(*q) for q in percentile]), np.mean([(q[1] - q[0]) / 3.92 for q in percentile]) / sd),
        "bootstrap se": (np.mean([covered(row["est"] - 1.96 * row["boot_se"], row["est"] + 1.96 * row["boot_se"]) for row in rows]),
                         np.mean([row["boot_se"] for row in rows]) / sd),
        "jackknife": (np.mean([covered(row["est"] - z_jack * row["jack_se"], row["est"] + z_jack * row["jack_se"]) for row in rows]),
                      np.mean([row["jack_se"] for row in rows]) / sd),
        "delta": (np.mean([covered(row["est"] - 1.96 * row["delta_se"], row["est"] + 1.96 * row["delta_se"]) for row in rows]),
                  np.mean([row["delta_se"] for row in rows]) / sd),
    }  # fmt: skip
    inf = np.array([row["jack_inf"] for row in rows])
    inf_cover = np.mean([covered(row["jack_inf"] - z_jack * row["jack_se"], row["jack_inf"] + z_jack * row["jack_se"], infinite) for row in rows])
    return {"target": target, "sd": sd, "methods": out, "infinite": infinite, "inf_mean": inf.mean(), "inf_sd": inf.std(ddof=1), "inf_cover": inf_cover}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--cells", choices=["all", "quick"], default="all")
    args = parser.parse_args()
    cells = (
        [(16, 200, 200), (128, 500, 359)]
        if args.cells == "quick"
        else [(d, n, m) for d, n in itertools.product((16, 128), (200, 500, 2000)) for m in (359, n)]
    )
    print(f"R = {args.repetitions} repetitions per cell (binomial sd of a 95% coverage: {100 * (0.0475 / args.repetitions) ** 0.5:.1f} points); "
          f"bootstrap B = {args.resamples}; jackknife G = {args.groups}; torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| D | N | M | gap | E[FID_N] | sd | bootstrap percentile | bootstrap se | jackknife | delta | FID_inf (closed form) | jackknife FID_inf: mean, sd, coverage |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (d, n, m), gap in itertools.product(dict.fromkeys(cells), (True, False)):
        start = time.perf_counter()
        got = cell(d, n, m, gap, args.repetitions, args.resamples, args.groups)
        methods = " | ".join(f"{cover:.0%}, {width:.2f}x" for cover, width in got["methods"].values())
        print(f"| {d} | {n} | {m} | {'real' if gap else 'none'} | {got['target']:.3f} | {got['sd']:.3f} | {methods} | {got['infinite']:.3f} | "
              f"{got['inf_mean']:.3f}, {got['inf_sd']:.3f}, {got['inf_cover']:.0%} |", flush=True)  # fmt: skip
        print(f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
