"""The grid search (sampling.grid_search), the "searched" spacing in the plan, and the `search` stage.

On Gaussian data the exact ODE solution from any x_T is known (tests/test_solvers.py), so a
searched grid can be checked on x_T it never saw against the closed-form grids it must beat.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from stages import sample, search, train

from conftest import invoke, isolate_stores, prepare_inputs, train_args, write_tiny_params
from ddpmlab.config import SampleConfig
from ddpmlab.core.denoiser import Denoiser
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.step_grids import step_grid
from ddpmlab.sampling.endpoint import endpoint_errors
from ddpmlab.sampling.grid_search import search_grid
from ddpmlab.sampling.plan import Run, build_plan, search_targets
from ddpmlab.sampling.registry import SAMPLERS
from ddpmlab.sampling.trajectory import SeededNoise
from test_solvers import gaussian_eps, ode_solution


def test_the_descent_finds_the_minimum_of_a_separable_error_within_its_budget():
    target = (3, 17, 40, 71, 99)
    calls = []

    def error_of(grid):
        calls.append(grid)
        return sum((g - t) ** 2 for g, t in zip(grid, target))

    starts = {"even": [0, 25, 50, 75, 99], "low": [0, 1, 2, 3, 99]}
    result = search_grid(error_of, 100, starts, max_runs=400)
    assert result.grid == target and result.error == 0 and result.start == "even"
    assert len(calls) == len(set(calls)) == result.runs  # each grid scored once
    assert all(b > a for grid in calls for a, b in itertools.pairwise(grid)) and all(0 <= g[0] and g[-1] <= 99 for g in calls)
    capped = search_grid(error_of, 100, starts, max_runs=5)
    assert capped.runs == 2 + 5 and capped.error < result.fixed["even"]


def oracle_error(sampler: str, base: DiffusionProcess, seeds: range):
    """grid -> mean endpoint error of ``sampler`` on N(MU, S^2) data against the exact ODE solution."""

    def error_of(grid):
        torch.set_default_dtype(torch.float64)
        try:
            x_T = SeededNoise(seeds, (1, 4, 4))()
            x0 = SAMPLERS[sampler].function(Denoiser(gaussian_eps(base), base.respaced(list(grid)), "eps", False), SeededNoise(seeds, (1, 4, 4)))
            return endpoint_errors(x0, ode_solution(x_T, float(base.alpha_bars[-1]), 1.0)).mean().item()
        finally:
            torch.set_default_dtype(torch.float32)

    return error_of


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ipndm", "unipc", "dpmpp_2m_afs"])
@pytest.mark.parametrize("steps", [3, 4])
def test_a_searched_grid_beats_the_closed_form_grids_on_unseen_noise(sampler, steps):
    base = DiffusionProcess.from_schedule("linear", 100)
    starts = {s: step_grid(s, base.alpha_bars, steps) for s in ("uniform", "quadratic", "logsnr", "karras", "arctan")}
    result = search_grid(oracle_error(sampler, base, range(32)), base.T, starts, max_runs=60)
    held_out = oracle_error(sampler, base, range(1000, 1064))
    searched = held_out(result.grid)
    for name in ("uniform", "quadratic", "logsnr"):
        assert searched <= held_out(tuple(starts[name])), (name, result.grid, starts[name])


def test_the_plan_takes_searched_grids_for_deterministic_runs_only():
    cfg = SampleConfig(sampler=("ddpm", "dpmpp_2m", "ddim"), steps=(4,), spacing=("uniform", "searched"))
    grids = {("dpmpp_2m", 4): [0, 10, 40, 99], ("ddim", 4): [0, 5, 30, 99]}
    plan = build_plan(cfg, conditional=False, searched=grids)
    assert [r.key for r in plan] == ["ddpm-4", "dpmpp_2m-4", "dpmpp_2m-searched-4", "ddim-4", "ddim-searched-4"]
    run = plan[2]
    assert run.process(DiffusionProcess.from_schedule("linear", 100)).model_timesteps.tolist() == [0, 10, 40, 99]
    assert Run.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert [(r.sampler, r.steps) for r in search_targets(cfg, conditional=False)] == [("dpmpp_2m", 4), ("ddim", 4)]
    with pytest.raises(ValueError, match="no searched grid for ddim at 4 steps"):
        build_plan(cfg, conditional=False, searched={("dpmpp_2m", 4): [0, 10, 40, 99]})
    stochastic_ddim = SampleConfig(sampler=("ddim",), steps=(4,), spacing=("searched",), eta=1.0)
    assert search_targets(stochastic_ddim, conditional=False) == [] and build_plan(stochastic_ddim, False, {}) == []


def test_the_search_stage_feeds_the_sample_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_stores(monkeypatch, tmp_path)
    p = write_tiny_params(tmp_path / "params.yaml", sample={"sampler": ["ddpm", "unipc_afs"], "steps": [4], "spacing": ["uniform", "searched"]},
                          search={"samples": 6, "max_runs": 4})  # fmt: skip
    prepare_inputs(p, tmp_path)
    invoke(train, *train_args(p, tmp_path, tmp_path))
    invoke(search, "--params", p, "--model", tmp_path / "model", "--out", tmp_path / "grids.json")
    grids = json.loads((tmp_path / "grids.json").read_text())
    [found] = grids["grids"]
    assert (found["sampler"], found["steps"], found["nfe"]) == ("unipc_afs", 4, 3) and found["runs"] <= 6 + 4
    assert len(found["grid"]) == 4 and found["endpoint_error"] <= min(found["fixed"].values())
    assert grids["reference"]["sampler"] == "dpmpp_3m" and grids["reference"]["steps"] == 30 and grids["seconds"] > 0
    invoke(sample, "--params", p, "--model", tmp_path / "model", "--grids", tmp_path / "grids.json", "--out", tmp_path / "samples")
    runs = {r["key"]: r for r in json.loads((tmp_path / "samples" / "sampling.json").read_text())["runs"]}
    assert list(runs) == ["ddpm-4", "unipc_afs-4", "unipc_afs-searched-4"]  # ddpm is stochastic: no searched grid
    assert runs["unipc_afs-searched-4"]["timesteps"] == runs["unipc_afs-searched-4"]["grid"] == found["grid"]
    assert "endpoint_error" not in runs["ddpm-4"]
    for key in ("unipc_afs-4", "unipc_afs-searched-4"):
        assert runs[key]["endpoint_error_ci_low"] <= runs[key]["endpoint_error"] <= runs[key]["endpoint_error_ci_high"]
