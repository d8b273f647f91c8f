"""Replicates over training seeds: config ids, Welch's interval over 2-5 replicates, the marks and
the one-param differences `ddpmlab compare` reports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import ROOT
from ddpmlab.config import Params, config_id
from ddpmlab.reporting import compare, replicates


def params(**changes) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition("__")
        (raw[section] if section else raw)[key] = value
    return Params.from_dict(raw)


def test_replicates_share_a_config_id_and_any_other_param_changes_it():
    base = config_id(params())
    assert config_id(params(train__seed=7)) == config_id(params(sample__seed=3)) == base  # replicate seeds only
    assert config_id(params(tracking__experiment="other")) == config_id(params(evaluate__bootstrap=50)) == base  # never change a score
    others = [params(schedule="cosine"), params(T=50), params(seed=1), params(train__lr=2e-3), params(sample__eta=0.5),
              params(model__dropout=0.0), params(evaluate__kid_subset_size=50), params(classifier__steps=10)]  # fmt: skip
    ids = [config_id(p) for p in others]
    assert base not in ids and len(set(ids)) == len(ids)


def test_config_id_is_stable_under_key_order_and_across_processes(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    reordered = {key: raw[key] for key in reversed(list(raw))}
    reordered["train"] = {key: raw["train"][key] for key in sorted(raw["train"], reverse=True)}
    assert config_id(Params.from_dict(reordered)) == config_id(Params.from_dict(raw))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(reordered))
    code = f"import yaml; from ddpmlab.config import Params, config_id; print(config_id(Params.from_dict(yaml.safe_load(open({str(path)!r})))))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert other.stdout.strip() == config_id(Params.from_dict(raw)) and len(other.stdout.strip()) == 12


def test_pooled_interval_is_the_student_t_interval():
    values = [2.0, 2.6, 3.1]
    p = replicates.pool(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert (p.mean, p.low, p.high) == pytest.approx((np.mean(values), np.mean(values) - half, np.mean(values) + half))
    assert replicates.pool([2.0], single_interval=(1.0, 3.5)) == replicates.Pooled((2.0,), 1.0, 3.5)  # one replicate keeps its bootstrap interval


def test_welch_matches_the_textbook_formula():
    a, b = (1.0, 2.0, 4.0), (3.0, 5.0, 6.5, 7.0)
    w = replicates.welch(a, b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    diff = np.mean(b) - np.mean(a)
    assert (w.difference, w.low, w.high, w.df) == pytest.approx((diff, diff - half, diff + half, df))
    assert replicates.welch((1.0,), b) is None


@pytest.mark.parametrize("k", [2, 3, 5])
def test_welch_false_positive_rate_over_few_replicates_is_about_5_percent(k):
    """Equal means, unequal seed-to-seed spreads (sd 0.3 and 0.6): 'detected' in at most ~8% of 4,000 studies."""
    rng = np.random.default_rng(k)
    detected = np.mean([replicates.welch(tuple(rng.normal(2.0, 0.3, k)), tuple(rng.normal(2.0, 0.6, k))).detected for _ in range(4000)])
    assert detected <= 0.08, detected


def test_welch_power_at_three_and_five_replicates():
    """The power docs/comparing.md states (measured: 3 + 3 replicates find a 3-sd difference in 67% of
    studies, a 1-sd one in 11%; 5 + 5 find 2 sd in 76%): few seeds resolve large effects only."""
    rng = np.random.default_rng(0)

    def power(shift: float, k: int) -> float:
        return float(np.mean([replicates.welch(tuple(rng.normal(0, 1, k)), tuple(rng.normal(shift, 1, k))).detected for _ in range(4000)]))

    assert 0.6 <= power(3.0, 3) <= 0.75 and power(1.0, 3) < 0.2 and 0.7 <= power(2.0, 5) <= 0.82


def evaluation(config: str, seed: int, fid: float, sampler: str = "ddpm", steps: int = 10, schedule: str = "linear", **params: str) -> dict:
    """One evaluation row as ``mlflow.search_runs`` returns it, tagged with its config id."""
    run = f"{config}-{seed}-{sampler}-{steps}"
    return {
        "run_id": f"e-{run}", "start_time": pd.Timestamp(seed, unit="s"), "tags.ddpmlab.stage": "evaluate", "tags.mlflow.runName": run,
        "tags.ddpmlab.config_id": config, "params.train_run_id": f"t-{config}-{seed}", "params.sampler": sampler,
        "params.spacing": "uniform", "params.sample_steps": str(steps), "params.nfe": str(steps), "params.schedule": schedule,
        "params.T": "100", "params.train.seed": str(seed), "metrics.fid": fid, "metrics.seconds_per_sample": 0.01,
        **{f"params.{k}": v for k, v in params.items()},
    }  # fmt: skip


def study(fids: dict[str, list[float]], schedules: dict[str, str]) -> compare.Selection:
    rows = [evaluation(config, seed, fid, schedule=schedules[config]) for config, values in fids.items() for seed, fid in enumerate(values)]
    return compare.select(pd.DataFrame(rows))


def test_compare_pools_replicates_and_marks_a_detectably_better_config_bold():
    selection = study({"aaa": [2.0, 2.1, 1.9], "bbb": [4.0, 4.2, 3.9], "ccc": [6.0, 6.5, 5.6]}, {"aaa": "cosine", "bbb": "linear", "ccc": "sigmoid"})
    header, rows = compare.pooled_table(selection)
    fid = header.index("FID")
    by_config = {r[0]: r for r in rows}
    assert set(by_config) == {"cosine", "linear", "sigmoid"} and all(r[header.index("replicates")] == 3 for r in rows)
    assert isinstance(by_config["cosine"][fid], compare.Emphasis) and by_config["cosine"][fid].value.value == pytest.approx(2.0)
    assert not isinstance(by_config["linear"][fid], compare.Emphasis | compare.Tied)


def test_compare_marks_the_tied_group_and_no_best_when_the_leader_is_not_detectably_better():
    selection = study({"aaa": [2.0, 3.0, 1.0], "bbb": [2.5, 3.5, 1.5], "ccc": [9.0, 9.2, 8.8]}, {"aaa": "cosine", "bbb": "linear", "ccc": "sigmoid"})
    header, rows = compare.pooled_table(selection)
    marks = {r[0]: type(r[header.index("FID")]).__name__ for r in rows}
    assert marks == {"cosine": "Tied", "linear": "Tied", "sigmoid": "Estimate"}


def test_single_replicates_are_never_marked():
    selection = study({"aaa": [2.0], "bbb": [9.0]}, {"aaa": "cosine", "bbb": "linear"})
    header, rows = compare.pooled_table(selection)
    assert all(type(r[header.index("FID")]).__name__ == "Estimate" for r in rows)
    _, differences = compare.differences_table(selection)
    assert [r[-1] for r in differences] == ["no verdict: needs >= 2 replicates per config (has 1 + 1)"]


def test_differences_pair_configs_that_differ_in_one_param_only():
    rows = [evaluation(c, s, fid, schedule=sched, **{"train.lr": lr}) for c, sched, lr, fids in
            [("aaa", "linear", "0.001", [4.0, 4.2, 3.9]), ("bbb", "cosine", "0.001", [2.0, 2.1, 1.9]),
             ("ccc", "cosine", "0.002", [2.05, 1.95, 2.1]), ("ddd", "sigmoid", "0.002", [9.0, 9.1, 9.2])]
            for s, fid in enumerate(fids)]  # fmt: skip
    _, found = compare.differences_table(compare.select(pd.DataFrame(rows)))
    assert all((r[3], r[4], r[5]) == ("ddpm", "uniform", "10") for r in found)  # the way both were sampled
    by_pair = {(r[0], r[1], r[2]): r[-1] for r in found}
    # linear -> cosine at lr 0.001: FID falls by 2, far beyond the seed spread, so B is better; lr 0.001 -> 0.002 at cosine: a tie;
    # cosine -> sigmoid at 0.002: worse. linear/0.001 vs sigmoid/0.002 differ in two params: not paired.
    assert by_pair == {
        ("schedule: linear -> cosine", "linear, train.lr=0.001", "cosine, train.lr=0.001"): "better",
        ("train.lr: 0.001 -> 0.002", "cosine, train.lr=0.001", "cosine, train.lr=0.002"): "no detectable difference at 3 + 3 replicates",
        ("schedule: cosine -> sigmoid", "cosine, train.lr=0.002", "sigmoid, train.lr=0.002"): "worse",
    }


def test_differences_are_written_to_the_document():
    selection = study({"aaa": [2.0, 2.1, 1.9], "bbb": [4.0, 4.2, 3.9]}, {"aaa": "cosine", "bbb": "linear"})
    md = compare.document(selection, {}, "a test").to_markdown()
    assert "## Configs over training seeds" in md and "## Which config differences are real" in md
    assert "1 of 1 changes are real" in md and "3 replicates each" in md
    assert json.dumps("better than real") not in md


def test_a_retrained_twin_replaces_its_replicate_and_protocol_changes_get_no_verdict():
    rows = [evaluation("aaa", s, fid) for s, fid in enumerate([2.0, 2.1, 1.9])]
    twin = {**evaluation("aaa", 0, 5.0), "run_id": "e-twin", "params.train_run_id": "t-twin", "start_time": pd.Timestamp(99, unit="s")}
    rows.append({**twin, "tags.ddpmlab.replicate": "train.seed=0 sample.seed=1"})
    for row in rows[:3]:
        row["tags.ddpmlab.replicate"] = f"train.seed={row['params.train.seed']} sample.seed=1"
    selection = compare.select(pd.DataFrame(rows))
    assert sorted(selection.evaluations["metrics.fid"]) == [1.9, 2.1, 5.0]  # seed 0's newer twin replaced it: still 3 replicates
    protocol = [evaluation(c, s, fid, **{"sample.num_samples": n}) for c, n, fids in [("aaa", "500", [2.0, 2.1, 1.9]), ("bbb", "100", [9.0, 9.1, 9.2])]
                for s, fid in enumerate(fids)]  # fmt: skip
    _, found = compare.differences_table(compare.select(pd.DataFrame(protocol)))
    assert [r[-1] for r in found] == ["not compared: a change of the evaluation protocol"]


def test_identical_replicates_give_no_verdict():
    w = replicates.welch((0.5, 0.5), (0.7, 0.7))
    assert not w.detected and replicates.verdict(w, "min", (2, 2)) == "no verdict: every replicate scored the same"
