"""Endpoint error of few-step samplers on the Gaussian-data oracle, whose exact ODE solution is known
(tests/test_solvers.py): every deterministic sampler, with and without the analytic first step, on
every closed-form grid and on a grid searched for it (sampling.grid_search, on other x_T), at equal
NFE. No network: this isolates the solver and the grid from how well a model was trained.

    PYTHONPATH=src:tests python benchmarks/few_step_oracle.py [--nfe 3 4 5 6]
"""

from __future__ import annotations

import argparse

import torch

from ddpmlab.core.denoiser import Denoiser
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.math_names import SPACINGS
from ddpmlab.core.step_grids import step_grid
from ddpmlab.sampling.endpoint import endpoint_errors
from ddpmlab.sampling.grid_search import search_grid
from ddpmlab.sampling.registry import SAMPLERS
from ddpmlab.sampling.trajectory import SeededNoise
from test_solvers import gaussian_eps, ode_solution

CALIBRATION, EVALUATION = range(64), range(10_000, 10_256)


def error(sampler: str, base: DiffusionProcess, grid: tuple[int, ...], seeds: range) -> float:
    x_T = SeededNoise(seeds, (1, 4, 4))()
    x0 = SAMPLERS[sampler].function(Denoiser(gaussian_eps(base), base.respaced(list(grid)), "eps", False), SeededNoise(seeds, (1, 4, 4)))
    return endpoint_errors(x0, ode_solution(x_T, float(base.alpha_bars[-1]), 1.0)).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6])
    parser.add_argument("--max-runs", type=int, default=100)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    base = DiffusionProcess.from_schedule("linear", 100)
    samplers = [name for name, spec in SAMPLERS.items() if not spec.stochastic and name not in ("heun", "heun_afs", "ddim_afs")]
    spacings = [s for s in SPACINGS if s != "trailing"]
    print("Endpoint error (RMS, data N(0.3, 0.5^2), linear T = 100) on 256 unseen x_T; searched on 64 others\n")
    print("| sampler | NFE | " + " | ".join(spacings) + " | searched | searched grid |")
    print("|---|---|" + "---|" * (len(spacings) + 2))
    for nfe in args.nfe:
        for sampler in samplers:
            steps = nfe + 1 if SAMPLERS[sampler].analytic_first_step else nfe
            starts = {s: step_grid(s, base.alpha_bars, steps) for s in spacings}
            found = search_grid(lambda g, sampler=sampler: error(sampler, base, g, CALIBRATION), base.T, starts, args.max_runs)
            fixed = [error(sampler, base, tuple(starts[s]), EVALUATION) for s in spacings]
            print(f"| {sampler} | {nfe} | " + " | ".join(f"{e:.4f}" for e in fixed) + f" | {error(sampler, base, found.grid, EVALUATION):.4f} | {list(found.grid)} |")


if __name__ == "__main__":
    main()
