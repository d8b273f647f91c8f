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


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("conditional")
    params = write_tiny_params(tmp_path / "params.yaml", model={"conditional": True}, sample={"guidance": GUIDANCE})
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_stores(monkeypatch, tmp_path)
        run_pipeline(params, tmp_path)
    return tmp_path


def test_samples_every_step_count_at_the_first_w_and_every_w_at_the_first_step_count(conditional: Path):
    sampling = json.loads((conditional / "samples" / "sampling.json").read_text())
    assert sampling["num_classes"] == 10
    assert [(r["steps"], r["guidance"], r["key"]) for r in sampling["runs"]] == [(30, 0.0, "30w0"), (5, 0.0, "5w0"), (30, 1.0, "30w1"), (30, 3.0, "30w3")]
    assert [r["network_evals_per_sample"] for r in sampling["runs"]] == [30, 5, 60, 60]  # guided steps run the network twice
    with np.load(conditional / "samples" / "steps-30-w1" / "samples.npz") as f:
        assert f["labels"].tolist() == [i % 10 for i in range(24)]  # image i asked to be class i mod 10
    assert (conditional / "samples" / "steps-30-w3" / "class_grid.png").is_file()


def test_every_run_is_scored_with_its_conditional_accuracy(conditional: Path):
    metrics = json.loads((conditional / "metrics.json").read_text())
    for key in ("30w0", "5w0", "30w1", "30w3"):
        assert np.isfinite(metrics[f"fid@{key}"]) and 0.0 <= metrics[f"acc@{key}"] <= 1.0
    assert metrics["cond_accuracy"] == metrics["acc@30w0"]
    evaluation = json.loads((conditional / "evaluation.json").read_text())
    assert evaluation["guidance"] == 0.0
    assert evaluation["per_class_fid"]["by_run"]["30w1"] is None  # 2-3 tiny images per class: below the minimum
    with open(conditional / "guidance.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["guidance"]) for r in rows] == GUIDANCE and {r["steps"] for r in rows} == {"30"}
    with open(conditional / "steps.csv") as f:
        assert [r["steps"] for r in csv.DictReader(f)] == ["30", "5"]  # the step-count sweep, at the first w


def test_report_shows_the_trade_off_and_a_class_grid_per_w(conditional: Path):
    report = (conditional / "reports" / "report.md").read_text()
    assert "## Classifier-free guidance" in report and "figures/guidance.png" in report
    assert "at 30, 5 steps at guidance w = 0, and w = 1, 3 at 30 steps (respaced" in report
    assert "one row per count (30, 5, top to bottom)" in report  # the comparison grid holds the first w only
    assert "| sample.guidance | 0, 1, 3 |" in report
    for w in ("0", "1", "3"):
        assert f"figures/class_grid_w{w}.png" in report
        assert (conditional / "reports" / "figures" / f"class_grid_w{w}.png").is_file()


def test_mlflow_has_one_evaluation_run_per_steps_and_w(conditional: Path):
    mlflow.set_tracking_uri(f"sqlite:///{conditional / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddpmlab"])
    evaluations = runs[runs["tags.ddpmlab.stage"] == "evaluate"]
    assert sorted(zip(evaluations["params.sample_steps"], evaluations["params.guidance"])) == [("30", "0.0"), ("30", "1.0"), ("30", "3.0"), ("5", "0.0")]
    assert evaluations["metrics.cond_accuracy"].between(0, 1).all()


def test_an_unconditional_run_has_no_guidance_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The default (model.conditional: false) ignores sample.guidance: one run per step count, as before."""
    params = write_tiny_params(tmp_path / "params.yaml", sample={"guidance": GUIDANCE, "steps": [5]}, evaluate={"snapshot_samples": 0, "nll_images": 0})
    isolate_stores(monkeypatch, tmp_path)
    run_pipeline(params, tmp_path)
    sampling = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert [(r["steps"], r["guidance"], r["folder"]) for r in sampling["runs"]] == [(5, None, "steps-5")]
    assert (tmp_path / "guidance.csv").read_text().strip() == "guidance,steps,fid,fid_train,is_mean,cond_accuracy,per_class_fid,precision,recall"  # header only
    assert "acc@5" not in json.loads((tmp_path / "metrics.json").read_text())


def test_compare_lists_every_steps_and_w_with_its_class_accuracy(conditional: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_compare import run_compare, table_rows

    result = run_compare(monkeypatch, f"sqlite:///{conditional / 'mlflow.db'}", "--out", tmp_path, "--data", conditional / "data")
    assert result.exit_code == 0, result.output
    header, *rows = table_rows((tmp_path / "compare.md").read_text())
    steps, w, accuracy = header.index("steps"), header.index("w"), header.index("class accuracy")
    assert sorted((r[steps], r[w]) for r in rows) == [("30", "0.0"), ("30", "1.0"), ("30", "3.0"), ("5", "0.0")]
    assert all(0 <= float(r[accuracy].strip("*")) <= 1 for r in rows)
