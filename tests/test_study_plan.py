"""`ddpmlab plan`: the pilot read off MLflow runs, the seeds and images a comparison needs, and that
the plan delivers its power on a simulated pilot with known variances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ddpmlab.cli import main
from ddpmlab.reporting import compare, planning, replicates, study_plan

SAMPLING_SD, SEED_SD, N = 0.05, 0.10, 500  # log-FID scale


def pilot_selection(rng: np.random.Generator, configs: int, seeds: int) -> compare.Selection:
    """Evaluations as mlflow.search_runs returns them: each run's log FID = config mean + seed part + sampling part,
    its interval as wide as the known sampling sd says (delta method: half-width 1.96 sd FID)."""
    rows, trainings = [], []
    for c in range(configs):
        for s in range(seeds):
            fid = float(np.exp(1.0 + 0.05 * c + rng.normal(0, SEED_SD) + rng.normal(0, SAMPLING_SD)))
            half = 1.959964 * SAMPLING_SD * fid
            run = f"c{c}-s{s}"
            rows.append({
                "run_id": f"e-{run}", "start_time": pd.Timestamp(s, unit="s"), "tags.ddpmlab.stage": "evaluate", "tags.mlflow.runName": run,
                "tags.ddpmlab.config_id": f"c{c}", "params.train_run_id": f"t-{run}", "params.sampler": "ddim", "params.spacing": "uniform",
                "params.sample_steps": "10", "params.nfe": "10", "params.schedule": "linear", "params.T": "100", "params.train.seed": str(s),
                "params.num_generated": str(N), "params.reference_images.test": "359", "metrics.fid": fid,
                "metrics.fid_ci_low": fid - half, "metrics.fid_ci_high": fid + half, "metrics.seconds_per_sample": 0.01,
            })  # fmt: skip
            trainings.append({"run_id": f"t-{run}", "tags.ddpmlab.stage": "train", "start_time": pd.Timestamp(s, unit="s"), "metrics.train_seconds": 300.0})
    return compare.select(pd.DataFrame(rows + trainings))


def test_the_pilot_splits_the_replicate_spread_into_seed_and_sampling_parts():
    (pilot,) = study_plan.pilots(pilot_selection(np.random.default_rng(0), configs=4, seeds=30))
    assert pilot.way == ("ddim", "uniform", 10) and pilot.configs == 4 and pilot.runs == 120 and pilot.images == N and pilot.df == 4 * 29
    assert pilot.sampling_sd == pytest.approx(SAMPLING_SD, rel=1e-6)
    assert pilot.replicate_sd == pytest.approx(np.hypot(SEED_SD, SAMPLING_SD), rel=0.12)
    assert pilot.seed_sd == pytest.approx(SEED_SD, rel=0.2) and pilot.reference_images == 359
    assert pilot.sd_at(N) == pytest.approx(pilot.replicate_sd)  # at the pilot's N: the spread it saw
    assert pilot.sd_at(4 * N) == pytest.approx(np.hypot(pilot.seed_sd, SAMPLING_SD / 2), rel=1e-9)  # 4x images: half the sampling sd
    rows = study_plan.plan_rows(pilot, study_plan.Target.parse("10%"))
    assert [r["images"] for r in rows] == [500, 1000, 2000, 4000]
    assert [r["seeds"] for r in rows] == [planning.seeds_needed(-np.log(0.9), pilot.sd_at(r["images"])) for r in rows]
    assert rows[0]["seeds"] >= rows[-1]["seeds"]  # more images never need more seeds
    assert rows[0]["seconds"] == pytest.approx(2 * rows[0]["seeds"] * (300 + N * 0.01))
    assert all(r["seeds_upper"] >= r["seeds"] for r in rows)


def test_the_planned_seeds_give_80_percent_power_on_a_simulated_pilot():
    """A large pilot (8 configs x 50 seeds, so its spread is estimated within a few percent) with known spreads; its
    plan for a 10% FID difference at N images, then 2,000 new studies of that many seeds with the true spreads,
    through replicates.contrast: power 80% +- 7 points."""
    rng = np.random.default_rng(1)
    (pilot,) = study_plan.pilots(pilot_selection(rng, configs=8, seeds=50))
    k = study_plan.plan_rows(pilot, study_plan.Target.parse("10%"))[0]["seeds"]
    sd = np.hypot(SEED_SD, SAMPLING_SD)
    found = []
    for _ in range(2000):
        a, b = np.exp(1.0 + rng.normal(0, sd, k)), np.exp(1.0 + np.log(0.9) + rng.normal(0, sd, k))
        c = replicates.contrast(replicates.pool(list(a), seeds=list(range(k))), replicates.pool(list(b), seeds=list(range(100, 100 + k))), log_scale=True)
        found.append(c.p_value <= 0.05)
    print(f"planned {k} seeds per config; simulated power {np.mean(found):.1%}")
    assert abs(np.mean(found) - 0.80) <= 0.07


@pytest.mark.parametrize("text, relative, absolute", [("10%", 0.10, None), ("0.5", None, 0.5), (" 2.5 % ", 0.025, None)])
def test_the_target_reads_a_percentage_or_a_gap(text, relative, absolute):
    target = study_plan.Target.parse(text)
    assert (target.relative, target.absolute) == (pytest.approx(relative) if relative else None, absolute)
    assert target.log_effect(2.0) == pytest.approx(-np.log(1 - relative) if relative else np.log(2.5 / 2.0))


@pytest.mark.parametrize("text", ["abc", "0", "-5%", "100%", "150%"])
def test_a_bad_difference_is_refused_before_any_search_naming_it(text):
    result = CliRunner().invoke(main, ["plan", "--params", "missing.yaml", "--difference", text])
    assert result.exit_code == 2 and repr(text) in result.output and "percentage below 100" in result.output


def test_plan_reads_the_pilot_from_mlflow(schedules_store, monkeypatch: pytest.MonkeyPatch):
    """The schedules store has two replicates of linear: the pilot's spread comes from them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", schedules_store[1])
    result = CliRunner().invoke(main, ["plan", "--params", "missing.yaml", "--difference", "10%", "--sampler", "ddpm"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "To resolve a difference of 10% in FID" in result.output and "seeds per config" in result.output
    assert "ddpm, uniform, 30 steps" in result.output and "ddpm, uniform, 5 steps" in result.output and "dpmpp_2m" not in result.output
    assert "The MNISTs have 10,000".lower() in result.output.lower()
    missing = CliRunner().invoke(main, ["plan", "--params", "missing.yaml", "--difference", "10%", "--steps", "999"])
    assert missing.exit_code == 1 and "no way of sampling in the pilot matches" in missing.output


def test_the_images_share_never_exceeds_the_spread_replicates_show():
    """Replicates with one sample.seed share x_T: their spread can be below the intervals' sampling sd. Then the plan
    at the pilot's N keeps the spread seen, and all of it is taken as the images' share (the most images can buy)."""
    pilot = study_plan.Pilot(("ddpm", "uniform", 5), 3, 4, replicate_sd=0.006, sampling_sd=0.096, fid=0.4, images=24,
                             train_seconds=10.0, seconds_per_image=0.01, reference_images=359)  # fmt: skip
    assert pilot.images_sd == 0.006 and pilot.seed_sd == 0.0 and pilot.sd_at(24) == pytest.approx(0.006)
    assert pilot.sd_at(96) == pytest.approx(0.003)


def test_a_small_pilot_says_how_uncertain_its_spread_is():
    """One degree of freedom (two replicates): the spread's one-sided 80% upper bound is sqrt(1 / chi2_0.2(1)) = 3.9x."""
    pilot = study_plan.Pilot(("ddpm", "uniform", 50), 1, 2, replicate_sd=0.1, sampling_sd=0.05, fid=2.0, images=500,
                             train_seconds=300.0, seconds_per_image=0.01, reference_images=359, df=1)  # fmt: skip
    assert pilot.upper_factor() == pytest.approx(3.9, abs=0.05)
    (row, *_) = study_plan.plan_rows(pilot, study_plan.Target.parse("10%"))
    assert row["seeds_upper"] == planning.seeds_needed(-np.log(0.9), row["sd"] * pilot.upper_factor()) > row["seeds"]


def test_a_pilot_without_replicates_says_how_to_get_some():
    selection = pilot_selection(np.random.default_rng(2), configs=3, seeds=1)
    with pytest.raises(study_plan.NoPilot, match="train.seed=0,1,2"):
        study_plan.pilots(selection)
