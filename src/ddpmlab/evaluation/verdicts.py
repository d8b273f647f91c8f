"""Which runs of one checkpoint can be told apart: paired bootstrap differences of FID.

All runs of an evaluation share per-image seeds (the same x_T) and their bootstrap replicates
share resampled indices (:mod:`ddpmlab.evaluation.bootstrap`), so the difference of two runs'
scores is resampled pair by pair. Two statements come out:

- per NFE budget, the run with the lowest FID among those spending at most that many network
  evaluations, and every run whose difference to it has an interval containing 0: the *tied*
  group. The best run is picked after looking, and no correction is made for the number of
  comparisons, so "tied" is the safe reading and "detectably worse" slightly optimistic;
- per run, its FID against the real-data floor (real images scored the same way, same N, same
  reference resamples): above, indistinguishable from, or below it. Below the floor means the
  protocol cannot resolve the run from real data at this N, never that it beats real data.

These intervals cover sampling noise of one trained model only. A different training seed
moves FID too; ``ddpmlab compare`` over replicates (train.seed) is what answers whether one
config beats another.
"""

from __future__ import annotations

import torch

from ddpmlab.evaluation.bootstrap import LEVEL, difference

METRIC = "fid"


def _entry(d) -> dict:
    return {"difference": round(d.estimate, 5), "low": round(d.interval.low, 5), "high": round(d.interval.high, 5), "detected": d.detected}


def floor_verdict(d) -> str:
    if not d.detected:
        return "indistinguishable from the floor"
    return "above the floor" if d.estimate > 0 else "below the floor"


def sampling_verdicts(rows: list[dict], replicates: dict[str, dict[str, torch.Tensor]], floor: dict, floor_replicates: dict[str, torch.Tensor]) -> dict:
    """rows: the step sweep's score rows (key, nfe, fid); replicates: run key -> score -> (B,).

    Returns {"by_budget": [{budget, best, tied, runs: [{run, nfe, fid, difference, low, high, detected}]}],
    "vs_floor": {run key: {difference, low, high, detected, verdict}}, ...}."""
    by_budget = []
    for budget in sorted({row["nfe"] for row in rows}):
        within = sorted((row for row in rows if row["nfe"] <= budget), key=lambda row: row[METRIC])
        best = within[0]
        entries = []
        for row in within:
            d = difference(row[METRIC], replicates[row["key"]][METRIC], best[METRIC], replicates[best["key"]][METRIC])
            entries.append({"run": row["key"], "nfe": row["nfe"], METRIC: row[METRIC], **_entry(d)})
        tied = [e["run"] for e in entries if not e["detected"]]
        by_budget.append({"budget": budget, "best": best["key"], "tied": tied, "runs": entries})
    vs_floor = {}
    for row in rows:
        d = difference(row[METRIC], replicates[row["key"]][METRIC], floor[METRIC], floor_replicates[METRIC])
        vs_floor[row["key"]] = {**_entry(d), "verdict": floor_verdict(d)}
    return {
        "metric": METRIC,
        "level": LEVEL,
        "method": "paired bootstrap: the same resampled image indices (same x_T) for every run and the same reference "
        "resamples; percentile interval of the difference, recentred on the observed difference",
        "by_budget": by_budget,
        "vs_floor": vs_floor,
    }
