"""Step grids searched on the model itself: for one deterministic sampler and step count, the N
timesteps (out of the model's T) whose run lands closest to the many-step solution from the same
x_T (``sampling.endpoint``), on a calibration set of the model's own x_T. No data is used.

The search optimises the sampler's actual endpoint error, as LD3 (Tong et al. 2024) does with
gradients through the solver; here the grid is integers, so it is a coordinate descent: start
from the best closed-form grid at that step count, then move one timestep at a time by strides
of 16, 8, 4, 2, 1 while that lowers the error, until no single move does or the run budget is
spent. A multistep solver's error depends on every step it took, so the whole run is scored,
not a local step error (as GITS does). Every grid is kept distinct and inside 0..T - 1.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STRIDES = (16, 8, 4, 2, 1)

Grid = tuple[int, ...]


@dataclass
class SearchResult:
    grid: Grid
    error: float  # calibration endpoint error of ``grid``
    start: str  # the closed-form grid the descent started from
    fixed: dict[str, float]  # calibration endpoint error of every closed-form grid
    runs: int  # sampler runs spent (each on the whole calibration set)
    seconds: float = 0.0
    path: list[tuple[Grid, float]] = field(default_factory=list)  # accepted grids, in order

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "endpoint_error": round(self.error, 6), "start": self.start,
                "fixed": {k: round(v, 6) for k, v in self.fixed.items()}, "runs": self.runs, "seconds": round(self.seconds, 2)}  # fmt: skip


def _valid(grid: Grid, T: int) -> bool:
    return grid[0] >= 0 and grid[-1] <= T - 1 and all(b > a for a, b in itertools.pairwise(grid))


def search_grid(error_of: Callable[[Grid], float], T: int, starts: dict[str, list[int]], max_runs: int) -> SearchResult:
    """The lowest-error grid found from ``starts`` (name -> grid, all of one length N <= T).

    ``error_of(grid)`` runs the sampler on that grid and returns its mean endpoint error; each
    distinct grid is run once. ``max_runs`` bounds the runs after the starts (>= 0)."""
    began = time.perf_counter()
    seen: dict[Grid, float] = {}

    def score(grid: Grid) -> float:
        if grid not in seen:
            seen[grid] = float(error_of(grid))
        return seen[grid]

    fixed = {name: score(tuple(grid)) for name, grid in starts.items()}
    start = min(fixed, key=fixed.get)
    best, best_error = tuple(starts[start]), fixed[start]
    path, budget = [(best, best_error)], len(seen) + max_runs
    for stride in STRIDES:
        improved = True
        while improved and len(seen) < budget:
            improved = False
            for position in range(len(best)):
                for move in (-stride, stride):
                    candidate = best[:position] + (best[position] + move,) + best[position + 1 :]
                    if candidate in seen or not _valid(candidate, T) or len(seen) >= budget:
                        continue
                    if score(candidate) < best_error:
                        best, best_error, improved = candidate, seen[candidate], True
                        path.append((best, best_error))
    return SearchResult(best, best_error, start, fixed, len(seen), time.perf_counter() - began, path)
