"""A class-conditional model through every stage, as `dvc exp run -S model.conditional=true` runs it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import isolate_stores, run_pipeline, write_tiny_params

GUIDANCE = [0.0, 1.0, 3.0]
# The run plan with conftest's samplers [ddpm, dpmpp_2m] and steps [30, 5]: every (sampler, steps) at
# the first w, then every other w at the first (sampler, steps).
STEP_SWEEP = ["ddpm-30-w0", "ddpm-5-w0", "dpmpp_2m-30-w0", "dpmpp_2m-5-w0"]
GUIDANCE_SWEEP = ["ddpm-30-w0", "ddpm-30-w1", "ddpm-30-w3"]
RUN_KEYS = STEP_SWEEP + GUIDANCE_SWEEP[1:]


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("conditional")
    params = write_tiny_params(tmp_path / "params.yaml", model={"conditional": True}, sample={"guidance": GUIDANCE})
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_stores(monkeypatch, tmp_path)
        run_pipeline(params, tmp_path)
    return tmp_path


def test_samples_every_sampler_and_step_count_at_the_first_w_and_every_w_at_the_first_of_those(conditional: Path):
    sampling = json.loads((conditional / "samples" / "sampling.json").read_text())
    assert sampling["num_classes"] == 10
    assert [(r["sampler"], r["steps"], r["guidance"], r["key"]) for r in sampling["runs"]] == [
        ("ddpm", 30, 0.0, "ddpm-30-w0"), ("ddpm", 5, 0.0, "ddpm-5-w0"), ("dpmpp_2m", 30, 0.0, "dpmpp_2m-30-w0"),
        ("dpmpp_2m", 5, 0.0, "dpmpp_2m-5-w0"), ("ddpm", 30, 1.0, "ddpm-30-w1"), ("ddpm", 30, 3.0, "ddpm-30-w3"),
    ]  # fmt: skip
    assert [r["nfe"] for r in sampling["runs"]] == [30, 5, 30, 5, 60, 60]  # guided steps run the network twice (w = 0 needs no second pass)
    assert all(r["folder"] == r["key"] and r["spacing"] == "uniform" for r in sampling["runs"])
    for key in RUN_KEYS:
        with np.load(conditional / "samples" / key / "samples.npz") as f:
            assert f["labels"].tolist() == [i % 10 for i in range(24)]  # image i asked to be class i mod 10
        assert (conditional / "samples" / key / "class_grid.png").is_file()


def test_every_run_is_scored_with_its_conditional_accuracy(conditional: Path):
    metrics = json.loads((conditional / "metrics.json").read_text())
    assert metrics["run"] == "ddpm-30-w0"
    assert not [k for k in metrics if "@" in k] and len(metrics) <= 15
    evaluation = json.loads((conditional / "evaluation.json").read_text())
    for key in RUN_KEYS:
        assert np.isfinite(evaluation["by_run"][key]["fid"]) and 0.0 <= evaluation["by_run"][key]["cond_accuracy"] <= 1.0
    headline = evaluation["by_run"]["ddpm-30-w0"]
    assert metrics["cond_accuracy"] == headline["cond_accuracy"] and metrics["fid"] == headline["fid"]
    assert evaluation["headline_run"] == "ddpm-30-w0" and list(evaluation["by_run"]) == RUN_KEYS
    assert evaluation["by_run"]["ddpm-30-w0"]["guidance"] == 0.0 and evaluation["by_run"]["ddpm-30-w3"]["nfe"] == 60
    # 2-3 tiny images per class: below the minimum, so no run has a per-class FID.
    assert evaluation["min_images_per_class"] > 3
    assert all(row.get("per_class_fid") is None for row in evaluation["by_run"].values())
    assert (evaluation["per_class_fid"] or {}).get("by_run", {}).get("ddpm-30-w1") is None
    with open(conditional / "guidance.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["guidance"]) for r in rows] == GUIDANCE and [r["key"] for r in rows] == GUIDANCE_SWEEP and {r["steps"] for r in rows} == {"30"}
    with open(conditional / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == STEP_SWEEP  # the (sampler, steps) sweep, at the first w
    assert [(r["sampler"], r["steps"], r["nfe"], float(r["guidance"])) for r in rows] == [
        ("ddpm", "30", "30", 0.0), ("ddpm", "5", "5", 0.0), ("dpmpp_2m", "30", "30", 0.0), ("dpmpp_2m", "5", "5", 0.0),
    ]  # fmt: skip
    assert all(0.0 <= float(r["cond_accuracy"]) <= 1.0 for r in rows)
    with open(conditional / "fid_vs_nfe.csv") as f:  # FID against NFE per sampler, at the first w only
        rows = list(csv.DictReader(f))
    assert [r["nfe"] for r in rows] == ["5", "30"]
    fid = {key: row["fid"] for key, row in evaluation["by_run"].items()}
    assert [float(r["ddpm"]) for r in rows] == [fid["ddpm-5-w0"], fid["ddpm-30-w0"]]
    assert [float(r["dpmpp_2m"]) for r in rows] == [fid["dpmpp_2m-5-w0"], fid["dpmpp_2m-30-w0"]]
    assert all(r["ddim"] == "" and r["heun"] == "" for r in rows)  # registered samplers not run: blank


def test_report_shows_the_trade_off_and_a_class_grid_per_w(conditional: Path):
    report = (conditional / "reports" / "report.md").read_text()
    assert "## Classifier-free guidance" in report and "figures/guidance.png" in report
    assert "with ddpm and dpmpp_2m at 30 and 5 steps (uniform grid) at guidance w = 0, and w = 1, 3 at ddpm, 30 steps" in report
    assert "at 30 and 5 steps (uniform grid) at guidance w = 0, respaced out of T = 30" in report  # the comparison holds the first w only
    assert "figures/comparison.png" in report and "one row per sampler, one column per step count" in report
    assert (conditional / "reports" / "figures" / "comparison.png").is_file() and (conditional / "reports" / "figures" / "nfe.png").is_file()
    assert f"| sample.runs | {', '.join(RUN_KEYS)} |" in report
    for w in ("0", "1", "3"):
        assert f"figures/class_grid_w{w}.png" in report
        assert (conditional / "reports" / "figures" / f"class_grid_w{w}.png").is_file()


def test_mlflow_has_one_evaluation_run_per_plan_run(conditional: Path):
    mlflow.set_tracking_uri(f"sqlite:///{conditional / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddpmlab"])
    evaluations = runs[runs["tags.ddpmlab.stage"] == "evaluate"]
    assert sorted(evaluations["tags.mlflow.runName"]) == sorted(f"linear-T30-seed0-{key}" for key in RUN_KEYS)
    assert sorted(zip(evaluations["params.run_key"], evaluations["params.sampler"], evaluations["params.sample_steps"], evaluations["params.guidance"], evaluations["params.nfe"])) == sorted(
        [("ddpm-30-w0", "ddpm", "30", "0.0", "30"), ("ddpm-5-w0", "ddpm", "5", "0.0", "5"), ("dpmpp_2m-30-w0", "dpmpp_2m", "30", "0.0", "30"),
         ("dpmpp_2m-5-w0", "dpmpp_2m", "5", "0.0", "5"), ("ddpm-30-w1", "ddpm", "30", "1.0", "60"), ("ddpm-30-w3", "ddpm", "30", "3.0", "60")]
    )  # fmt: skip
    assert (evaluations["metrics.nfe"] == evaluations["params.nfe"].astype(float)).all()
    assert evaluations["metrics.cond_accuracy"].between(0, 1).all()


def test_an_unconditional_run_has_no_guidance_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The default (model.conditional: false) ignores sample.guidance: one run per (sampler, steps), no w in the keys."""
    params = write_tiny_params(tmp_path / "params.yaml", sample={"guidance": GUIDANCE, "steps": [5]}, evaluate={"snapshot_samples": 0, "nll_images": 0})
    isolate_stores(monkeypatch, tmp_path)
    run_pipeline(params, tmp_path)
    sampling = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert [(r["sampler"], r["steps"], r["guidance"], r["nfe"], r["folder"]) for r in sampling["runs"]] == [("ddpm", 5, None, 5, "ddpm-5"), ("dpmpp_2m", 5, None, 5, "dpmpp_2m-5")]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir() if p.is_dir()) == ["ddpm-5", "dpmpp_2m-5"]
    assert (tmp_path / "guidance.csv").read_text().strip() == "guidance,key,steps,fid,fid_train,is_mean,cond_accuracy,per_class_fid,precision,recall"  # header only
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["run"] == "ddpm-5" and list(json.loads((tmp_path / "evaluation.json").read_text())["by_run"]) == ["ddpm-5", "dpmpp_2m-5"]
    assert "cond_accuracy" not in metrics
    with open(tmp_path / "steps.csv") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["key", "sampler", "spacing", "steps", "nfe", "guidance"] and "cond_accuracy" not in header and "per_class_fid" not in header


def test_compare_lists_every_run_and_w_with_its_class_accuracy(conditional: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_compare import METRIC_HEADERS, TABLE_START, number, run_compare, table_rows

    result = run_compare(monkeypatch, f"sqlite:///{conditional / 'mlflow.db'}", "--out", tmp_path, "--data", conditional / "data")
    assert result.exit_code == 0, result.output
    assert f"compared {len(RUN_KEYS)} evaluations of 1 models" in result.output
    header, *rows = table_rows((tmp_path / "compare.md").read_text())
    assert header == TABLE_START + ["w"] + METRIC_HEADERS[:7] + ["class accuracy"] + METRIC_HEADERS[7:]
    sampler, steps, nfe, w, accuracy = (header.index(h) for h in ("sampler", "steps", "NFE", "w", "class accuracy"))
    assert sorted((r[sampler], r[steps], r[nfe], r[w]) for r in rows) == sorted(
        [("ddpm", "30", "30", "0.0"), ("ddpm", "5", "5", "0.0"), ("dpmpp_2m", "30", "30", "0.0"), ("dpmpp_2m", "5", "5", "0.0"), ("ddpm", "30", "60", "1.0"), ("ddpm", "30", "60", "3.0")]
    )  # fmt: skip
    assert all(0 <= number(r[accuracy]) <= 1 for r in rows)


def test_generate_redraws_a_guided_run_and_asks_for_any_class(conditional: Path, tmp_path: Path):
    """`ddpmlab generate` at w = 1 with every class in turn (the default) gives the stage's ddpm-30-w1
    PNGs byte for byte; --class 7 asks every image for class 7 (the same seeds, other images); a class
    the model does not know is named."""
    from click.testing import CliRunner

    from ddpmlab.cli import main as cli

    with np.load(conditional / "samples" / "ddpm-30-w1" / "samples.npz") as f:
        seeds = f["seeds"].tolist()
    common = ["generate", "--model", str(conditional / "model"), "--seeds", f"{seeds[0]}-{seeds[-1]}", "--sampler", "ddpm", "--steps", "30",
              "--guidance", "1", "--precision", "fp32", "--batch-size", "16", "--device", "cpu",
              "--channels-last", str(json.loads((conditional / "samples" / "sampling.json").read_text())["execution"]["channels_last"]).lower()]  # fmt: skip
    result = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "all")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for i, seed in enumerate(seeds):
        assert (tmp_path / "all" / f"{seed:06d}.png").read_bytes() == (conditional / "samples" / "ddpm-30-w1" / "images" / f"{i:06d}.png").read_bytes()
    result = CliRunner().invoke(cli, [*common, "--class", "7", "--out", str(tmp_path / "seven")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "seven" / "generation.json").read_text())
    assert record["classes"] == [7] and record["guidance"] == 1.0 and record["nfe"] == 60 and record["key"] == "ddpm-30-w1"
    result = CliRunner().invoke(cli, [*common, "--class", "10", "--out", str(tmp_path / "ten")])
    assert result.exit_code != 0 and "class 10: the model knows classes 0 to 9" in result.output
