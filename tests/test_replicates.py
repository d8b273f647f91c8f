"""Replicates over training seeds: config ids, the t tests over 2-5 replicates (log scale, paired
by seed or Welch's), their false-positive rate and power, the marks and the one-param differences
`ddpmlab compare` reports."""

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
from ddpmlab.config import Params, config_id, config_label
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
    assert config_id(params(tracking__experiment="other")) == config_id(params(evaluate__jackknife_groups=20)) == base  # never change a score
    assert config_id(params(evaluate__correction="holm")) == base
    others = [params(schedule="cosine"), params(T=50), params(seed=1), params(train__lr=2e-3), params(sample__eta=0.5),
              params(model__dropout=0.0), params(evaluate__kid_subset_size=50), params(classifier__steps=10)]  # fmt: skip
    ids = [config_id(p) for p in others]
    assert base not in ids and len(set(ids)) == len(ids)


def test_the_config_label_names_the_params_changed_from_the_defaults():
    assert config_label(params()) == "defaults" == config_label(params(train__seed=3, evaluate__correction="holm"))
    assert config_label(params(schedule="sigmoid", T=1000)) == "schedule=sigmoid T=1000"
    assert config_label(params(train__lr=2e-3, schedule="cosine")) == "schedule=cosine train.lr=0.002"  # params.yaml's order
    assert config_label(params(evaluate__correction="holm", evaluate__jackknife_groups=20)) == "defaults"  # verdict settings: not the config


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
    assert replicates.pool([2.0], single_interval=(1.0, 3.5)) == replicates.Pooled((2.0,), 1.0, 3.5)  # one replicate keeps its own interval


def pooled(values, seeds=None) -> replicates.Pooled:
    return replicates.pool(list(values), seeds=[str(s) for s in seeds] if seeds is not None else None)


def test_welch_on_log_scores_matches_the_textbook_formula():
    """No shared seeds: Welch's t on log FID, reported as the ratio of geometric means exp(mean log b - mean log a)."""
    a, b = (1.0, 2.0, 4.0), (3.0, 5.0, 6.5, 7.0)
    c = replicates.contrast(pooled(a, "xyz"), pooled(b, "pqrs"), log_scale=True)
    la, lb = np.log(a), np.log(b)
    va, vb = np.var(la, ddof=1) / 3, np.var(lb, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    diff = lb.mean() - la.mean()
    assert c.design == "welch" and c.log_scale
    assert (c.effect, c.low, c.high, c.df) == pytest.approx((np.exp(diff), np.exp(diff - half), np.exp(diff + half), df))
    assert c.p_value == pytest.approx(stats.ttest_ind(lb, la, equal_var=False).pvalue)
    assert replicates.contrast(pooled((1.0,)), pooled(b), log_scale=True) is None


def test_configs_that_ran_the_same_seeds_are_compared_seed_by_seed():
    """Seeds 0, 1, 2 on both sides: the paired t test on per-seed log ratios (scipy's ttest_rel as the reference)."""
    a, b = (2.0, 3.1, 2.4), (1.8, 2.9, 2.1)
    c = replicates.contrast(pooled(a, [0, 1, 2]), pooled(b, [0, 1, 2]), log_scale=True)
    assert c.design == "paired" and c.pairs == 3 and c.df == 2
    assert c.p_value == pytest.approx(stats.ttest_rel(np.log(b), np.log(a)).pvalue)
    assert c.effect == pytest.approx(np.exp(np.mean(np.log(b) - np.log(a))))
    shuffled = replicates.contrast(pooled(a, [0, 1, 2]), pooled(b[::-1], [2, 1, 0]), log_scale=True)  # matched by seed, not position
    assert shuffled.p_value == pytest.approx(c.p_value)
    one_shared = replicates.contrast(pooled(a, [0, 1, 2]), pooled(b, [0, 7, 8]), log_scale=True)
    assert one_shared.design == "welch"  # one pair gives no spread: Welch on all replicates
    rates = replicates.contrast(pooled((0.5, 0.6, 0.55), [0, 1, 2]), pooled((0.7, 0.8, 0.72), [0, 1, 2]), log_scale=False)
    assert rates.effect == pytest.approx(np.mean([0.2, 0.2, 0.17])) and rates.null == 0.0


def _studies(rng, k: int, studies: int, shape: str, shift: float = 0.0, shared_sd: float = 0.0, spreads=(0.3, 0.8)):
    """(a, b) replicate scores (studies, k): seed-to-seed log-sds ``spreads`` (lognormal), or sd 0.3 and 0.6 around
    FID 2 (normal); ``shared_sd``: a per-seed effect common to both configs (the same train.seed); B shifted by ``shift`` in log."""
    seed_effect = rng.normal(0, shared_sd, (studies, k)) if shared_sd else 0.0
    if shape == "lognormal":
        a = np.exp(0.7 + seed_effect + rng.normal(0, spreads[0], (studies, k)))
        b = np.exp(0.7 + shift + seed_effect + rng.normal(0, spreads[1], (studies, k)))
    else:
        a = np.clip(2.0 * np.exp(seed_effect) + rng.normal(0, 0.3, (studies, k)), 0.05, None)
        b = np.clip(2.0 * np.exp(shift + seed_effect) + rng.normal(0, 0.6, (studies, k)), 0.05, None)
    return a, b


# seeds -> the least power gain pairing must show. Measured on this seed, 2,000 studies: 3 seeds Welch 7.8%,
# paired 18.8%; 5 seeds 17.5% -> 43.8% (docs/comparing.md).
GAINS = {3: 0.08, 5: 0.2}


def _rate(a: np.ndarray, b: np.ndarray, paired: bool) -> float:
    seeds = list(range(a.shape[1]))
    found = []
    for x, y in zip(a, b):
        c = replicates.contrast(pooled(x, seeds), pooled(y, seeds if paired else [s + 100 for s in seeds]), log_scale=True)
        found.append(c.p_value <= 0.05)
    return float(np.mean(found))


@pytest.mark.parametrize("shape", ["normal", "lognormal"])
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_false_positive_rate_over_few_replicates_stays_at_5_percent(k, shape):
    """No true difference, unequal seed-to-seed spreads, 2-5 seeds: 'detected' in at most 5.5% of 6,000
    studies (Monte-Carlo sd 0.28 points), for Welch's test and for the paired one (seeds correlated, r ~ 0.5)."""
    rng = np.random.default_rng(100 * k + len(shape))
    assert _rate(*_studies(rng, k, 6000, shape), paired=False) <= 0.055
    assert _rate(*_studies(rng, k, 6000, shape, shared_sd=0.5), paired=True) <= 0.055


def test_pairing_by_seed_gains_power_when_seeds_move_both_configs():
    """A 20% lower geometric-mean FID, lognormal replicates: each config's own log-sd 0.15 and a per-seed
    effect both share (log-sd 0.2: r = 0.64 between configs; the audit measured +0.30 to +0.74). The
    paired test finds it more often than Welch's on the same data; GAINS holds what it measured."""
    rng = np.random.default_rng(7)
    for k, gain in GAINS.items():
        a, b = _studies(rng, k, 2000, "lognormal", shift=np.log(0.8), shared_sd=0.2, spreads=(0.15, 0.15))
        welch, paired = _rate(a, b, paired=False), _rate(a, b, paired=True)
        print(f"{k} seeds: Welch {welch:.1%}, paired {paired:.1%}")
        assert paired >= welch + gain


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
    selection = study({"aaa": [2.0, 3.0, 1.0], "bbb": [2.5, 3.5, 1.5], "ccc": [30.0, 31.0, 29.0]}, {"aaa": "cosine", "bbb": "linear", "ccc": "sigmoid"})
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
    header, found = compare.differences_table(compare.select(pd.DataFrame(rows)))
    assert all((r[3], r[4], r[5]) == ("ddpm", "uniform", "10") for r in found)  # the way both were sampled
    seeds = {r[0]: r[header.index("seeds for 80%")] for r in found}
    assert seeds["schedule: linear -> cosine"] == "" and (seeds["train.lr: 0.001 -> 0.002"].isdigit() or seeds["train.lr: 0.001 -> 0.002"] == "> 1000")
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
    c = replicates.contrast(pooled((0.5, 0.5), "ab"), pooled((0.7, 0.7), "cd"), log_scale=True)
    assert np.isnan(c.p_value) and replicates.verdict(c, float("nan"), "min", (2, 2)) == "no verdict: every replicate scored the same"


def test_pooled_intervals_stay_in_the_scores_valid_range():
    """Recall near 1 over three seeds: the t interval would pass 1."""
    p = replicates.pool([0.99, 0.97, 1.0], bounds=(0.0, 1.0))
    assert p.high == 1.0 and p.low < 0.99
