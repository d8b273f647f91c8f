"""The evaluate stage's numbers and files, built from the run plan and the metric registry.

One row per run (``plan.Run`` fields + every ``metric_registry`` metric), the real-data floor,
and from those: evaluation.json (everything), metrics.json (the flat headline DVC shows),
steps.csv (the (sampler, spacing, steps) sweep), guidance.csv (the w sweep) and fid_vs_nfe.csv
(one FID column per registered sampler against network evaluations, for `dvc plots`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ddpmlab.evaluation import metric_registry, resampled_scores
from ddpmlab.evaluation.metrics import FeatureSet
from ddpmlab.evaluation.protocol import per_class_fid
from ddpmlab.evaluation.resampling import Resampler, interval
from ddpmlab.sampling.plan import Run, guidance_sweep, step_sweep
from ddpmlab.sampling.registry import SAMPLERS

CURVE_FIELDS = ("step", "fid", "fid_train", "is_mean", "precision", "recall")
GUIDANCE_FIELDS = ("guidance", "key", "steps", "fid", "fid_train", "is_mean", "cond_accuracy", "per_class_fid", "precision", "recall")
NFE_FIELDS = ("nfe", *SAMPLERS)


def ratio(generated: float, real: float) -> float | None:
    return round(generated / real, 4) if real else None


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in metrics.items()}


def score_row(run: Run, entry: dict, scores: dict[str, float], floor: dict[str, float], replicates: dict | None = None, floor_replicates: dict | None = None,
              scheme: Resampler | None = None) -> dict:
    """A run's row: its plan fields, its scores, the ratios to the real floor and its sampling cost,
    and with ``replicates`` (score -> (B,)) every score's interval. entry: the run's record in
    sampling.json (seconds_per_sample)."""
    row = {
        **{k: v for k, v in run.to_dict().items() if k in metric_registry.RUN_FIELDS},
        **rounded(scores),
        "fid_ratio": ratio(scores["fid"], floor["fid"]),
        "is_ratio": ratio(scores["is_mean"], floor["is_mean"]),
        "seconds_per_sample": entry["seconds_per_sample"],
        "images_per_s": round(1 / entry["seconds_per_sample"], 2),
        **{k: v for k, v in entry.items() if k.startswith("endpoint_error")},  # measured while sampling (sampling.endpoint)
    }
    if replicates:
        ratios = {
            "fid_ratio": replicates["fid"] / floor_replicates["fid"],
            "is_ratio": replicates["is_mean"] / floor_replicates["is_mean"],
        }
        row.update(with_intervals(row, {**replicates, **ratios}, scheme))
    return row


def with_intervals(values: dict, replicates: dict, scheme: Resampler) -> dict:
    """<name>_ci_low / <name>_ci_high for every value that has replicates (R,) under ``scheme``, rounded
    like the values and cut to the score's valid range (metric_registry.bounds)."""
    out = {}
    for name, reps in replicates.items():
        if values.get(name) is not None:
            iv = interval(values[name], reps, scheme).clamped(metric_registry.bounds(name))
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = round(iv.low, 5), round(iv.high, 5)
    return out


def add_class_scores(row: dict, predicted: np.ndarray, labels: np.ndarray, generated: FeatureSet, reference: FeatureSet, reference_labels: np.ndarray,
                     counts: torch.Tensor | None = None, scheme: Resampler | None = None) -> dict | None:  # fmt: skip
    """Conditional models: accuracy against the classes asked for (with its interval given
    replicate ``counts`` (R, N) under ``scheme``), and per-class FID (None when too few per class)."""
    correct = torch.from_numpy(predicted == labels)
    row["cond_accuracy"] = round(float(correct.double().mean()), 4)
    if counts is not None:
        row.update(with_intervals(row, {"cond_accuracy": resampled_scores.proportion(correct, counts)}, scheme))
    per_class = per_class_fid(generated, labels, reference, reference_labels)
    if per_class is None:
        return None
    row["per_class_fid"] = round(float(np.mean(list(per_class.values()))), 5)
    return rounded(per_class)


def details(rows: list[dict], floor: dict, nll: dict | None, curve: list[dict], per_class: dict, protocol: dict, extras: dict) -> dict:
    """evaluation.json: every number and the protocol; ``by_run`` is keyed by run key, the first the headline."""
    headline_columns = [c for m in metric_registry.METRICS for c in m.columns + m.interval_columns]
    return {
        "headline_run": rows[0]["key"],
        **{c: rows[0][c] for c in headline_columns if rows[0].get(c) is not None},  # the headline run's scores
        "nll_bits_per_dim": nll["bits_per_dim"] if nll else None,
        "real": floor,
        **extras,
        "by_run": {row["key"]: row for row in rows},
        "per_class_fid": {"reference": "train", "by_run": per_class} if per_class else None,
        "nll": nll,
        "over_training": {"by_step": {str(r["step"]): {k: r[k] for k in CURVE_FIELDS[1:]} for r in curve}} if curve else None,
        "protocol": protocol,
    }


def headline_metrics(rows: list[dict], nll: dict | None, floor: dict) -> dict:
    """metrics.json, the DVC metric: flat and short for `dvc exp show` (metric_registry.headline)."""
    out = {"run": rows[0]["key"], **metric_registry.headline(rows[0])}
    out["nll_bpd"] = nll["bits_per_dim"] if nll else None
    out["real_fid"] = floor["fid"]
    return out


def nfe_table(rows: list[dict], runs: list[Run]) -> list[dict]:
    """FID by NFE, one column per registered sampler (blank where not run), on the plan's first spacing
    at the headline w: a fixed set of columns that dvc.yaml's plot can name."""
    spacing = runs[0].spacing
    by_nfe: dict[int, dict] = {}
    for row in rows:
        if row["spacing"] == spacing and row["guidance"] == runs[0].guidance:
            by_nfe.setdefault(row["nfe"], {"nfe": row["nfe"]})[row["sampler"]] = row["fid"]
    return [by_nfe[n] for n in sorted(by_nfe)]


def write_rows_csv(rows: list[dict], fields: tuple[str, ...], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_tables(rows: list[dict], runs: list[Run], curve: list[dict], conditional: bool, steps_csv: Path, guidance_csv: Path, nfe_csv: Path, curve_csv: Path) -> None:
    keys = {r.key for r in step_sweep(runs)}
    write_rows_csv([row for row in rows if row["key"] in keys], metric_registry.row_fields(conditional), steps_csv)
    sweep = {r.key for r in guidance_sweep(runs)}
    write_rows_csv([row for row in rows if row["key"] in sweep], GUIDANCE_FIELDS, guidance_csv)
    write_rows_csv(nfe_table(rows, runs), NFE_FIELDS, nfe_csv)
    write_rows_csv(curve, CURVE_FIELDS, curve_csv)


def write_nll_terms(terms: torch.Tensor | None, path: Path) -> None:
    """One row per term: t = 1 is L_0 (decoder), t = 2..T the KL L_{t-1}, t = T + 1 the prior L_T; header only without terms."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "term", "bits_per_dim"])
        if terms is None:
            return
        mean = terms.mean(dim=0)
        T = terms.shape[1] - 1
        for i in range(T + 1):
            name = "L_0" if i == 0 else ("L_T" if i == T else f"L_{i}")
            writer.writerow([i + 1, name, f"{mean[i].item():.6g}"])
