"""Which runs of one checkpoint can be told apart, from each other and from real data.

All runs of an evaluation share per-image seeds (the same x_T) and their replicates leave out
the same images (:mod:`ddpmlab.evaluation.resampling`), so the difference of two runs' scores is
replicated pair by pair. Three statements come out:

- per NFE budget, the run with the lowest FID among those spending at most that many network
  evaluations, and every run not detectably worse than it: the *tied* group. The best run is
  picked after looking, so "tied" is the safe reading;
- per run, its FID against the real-data floor (real images scored the same way, same N, same
  reference resamples): above, indistinguishable from, or below it. Below the floor means the
  protocol cannot resolve the run from real data at this N, never that it beats real data;
- per run, the exact test of its features against the test split's (:mod:`real_data_test`): a
  permutation test of FID. Detected: the images differ from real ones. Not detected: the verdict
  names the FID gap the test would have found with 80% power, so "indistinguishable" always says
  at what resolution.

Each of the three lists is one family of comparisons: its p-values (paired jackknife for the
first two, permutation for the third) are adjusted together (``evaluate.correction``,
Benjamini-Hochberg by default; :mod:`ddpmlab.evaluation.multiplicity`), and a comparison counts
as detected when its adjusted value is at most 5%. The intervals stay the per-comparison 95% ones.

These intervals cover sampling noise of one trained model only. A different training seed
moves FID too; ``ddpmlab compare`` over replicates (train.seed) is what answers whether one
config beats another.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpmlab.evaluation import multiplicity
from ddpmlab.evaluation.multiplicity import ALPHA
from ddpmlab.evaluation.real_data_test import RealDataTest
from ddpmlab.evaluation.resampling import LEVEL, Difference, Interval, Resampler, difference

METRIC = "fid"


def _entry(d: Difference, q: float) -> dict:
    detected = bool(np.isfinite(q) and q <= ALPHA)
    return {"difference": round(d.estimate, 5), "low": round(d.interval.low, 5), "high": round(d.interval.high, 5),
            "p": round(d.p_value, 5), "q": round(float(q), 5), "detected": detected}  # fmt: skip


def floor_verdict(entry: dict) -> str:
    if not entry["detected"]:
        return "indistinguishable from the floor"
    return "above the floor" if entry["difference"] > 0 else "below the floor"


def sampling_verdicts(
    rows: list[dict], replicates: dict[str, dict[str, torch.Tensor]], floor: dict, floor_replicates: dict[str, torch.Tensor],
    scheme: Resampler, *,
    num_images: int, floor_images: int, correction: str = multiplicity.DEFAULT, against_real: dict[str, RealDataTest] | None = None,
) -> dict:  # fmt: skip
    """rows: the step sweep's score rows (key, nfe, fid); replicates: run key -> score -> (R,) under ``scheme``;
    num_images: images per run; floor_images: real images behind the floor's FID; against_real: run key -> its
    exact test against the test split (the runs of ``rows`` that have one are the third family).

    Returns {"by_budget": [{budget, best, tied, runs: [{run, nfe, fid, difference, low, high, p, q, detected}]}],
    "vs_floor": {run key: {difference, low, high, p, q, detected, verdict}},
    "vs_real": {run key: {fid, p, q, detectable_fid, detected, verdict}}, ...}."""
    multiplicity.check_method(correction)

    def paired(a: dict, b: dict) -> Difference:
        return difference(a[METRIC], replicates[a["key"]][METRIC], b[METRIC], replicates[b["key"]][METRIC], scheme,
                          sizes=(num_images, num_images), names=(a["key"], b["key"]))  # fmt: skip

    budgets = sorted({row["nfe"] for row in rows})
    best_within = {budget: min((row for row in rows if row["nfe"] <= budget), key=lambda row: row[METRIC]) for budget in budgets}
    pairs = {
        (row["key"], best["key"]): paired(row, best)
        for budget, best in best_within.items() for row in rows if row["nfe"] <= budget and row["key"] != best["key"]
    }  # fmt: skip
    pair_q = dict(zip(pairs, multiplicity.adjusted([d.p_value for d in pairs.values()], correction)))
    by_budget = []
    for budget in budgets:
        best = best_within[budget]
        entries = []
        for row in sorted((row for row in rows if row["nfe"] <= budget), key=lambda row: row[METRIC]):
            pair = (row["key"], best["key"])
            entry = _entry(pairs[pair], pair_q[pair]) if pair in pairs else _entry(Difference(0.0, Interval(0.0, 0.0), 1.0), 1.0)
            entries.append({"run": row["key"], "nfe": row["nfe"], METRIC: row[METRIC], **entry})
        tied = [e["run"] for e in entries if not e["detected"]]
        by_budget.append({"budget": budget, "best": best["key"], "tied": tied, "runs": entries})
    vs_floor: dict[str, dict] = {}
    if floor_images == num_images:
        against = {
            row["key"]: difference(row[METRIC], replicates[row["key"]][METRIC], floor[METRIC], floor_replicates[METRIC], scheme,
                                   sizes=(num_images, floor_images), names=(row["key"], "the real-data floor"))
            for row in rows
        }  # fmt: skip
        for (key, d), q in zip(against.items(), multiplicity.adjusted([d.p_value for d in against.values()], correction)):
            entry = _entry(d, q)
            vs_floor[key] = {**entry, "verdict": floor_verdict(entry)}
    tested = {row["key"]: against_real[row["key"]] for row in rows if row["key"] in (against_real or {})}
    vs_real = {}
    for (key, test), q in zip(tested.items(), multiplicity.adjusted([t.p_value for t in tested.values()], correction)):
        detected = bool(q <= ALPHA)
        vs_real[key] = {"fid": round(test.fid, 5), "p": round(test.p_value, 5), "q": round(float(q), 5),
                        "detectable_fid": round(test.detectable, 5), "detected": detected, "verdict": real_verdict(test, detected)}  # fmt: skip
    return {
        "metric": METRIC,
        "level": LEVEL,
        "alpha": ALPHA,
        "method": f"paired {scheme.name}: every run's replicate k leaves out (or resamples) the same images (same x_T) and "
        "the same reference images; the difference +- t * its standard error; p-value inverting that interval",
        "correction": correction,
        "by_budget_family": multiplicity.describe(correction, len(pairs)),
        "vs_floor_family": multiplicity.describe(correction, len(vs_floor)) if vs_floor
        else f"not compared: the floor has {floor_images} real images and each run {num_images}",
        "vs_real_family": multiplicity.describe(correction, len(vs_real)),
        "vs_real_method": f"FID of the run's features against the test split's, permutation test ({next(iter(tested.values())).permutations} "
        "shuffles of which images are generated), one-sided" if tested else None,
        "by_budget": by_budget,
        "vs_floor": vs_floor,
        "vs_real": vs_real,
    }


def real_verdict(test: RealDataTest, detected: bool) -> str:
    """"differs from real data" or "indistinguishable from real data at N = 500 against 359 (a FID gap of 0.93 would be found 80% of the time)"."""
    if detected:
        return "differs from real data"
    return (f"indistinguishable from real data at N = {test.sizes[0]} against {test.sizes[1]} (a FID gap of {test.detectable:.2g} "
            "would be found 80% of the time)")  # fmt: skip
