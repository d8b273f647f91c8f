"""Every stage through click's CliRunner with tiny params, chained as dvc.yaml chains them."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from stages import classifier, evaluate, prepare, report, sample, train

from conftest import isolate_mlflow, write_tiny_params
from ddpmlab.cli import EXIT_CONFIG_ERROR


def invoke(command, *args: str) -> Result:
    result = CliRunner().invoke(command.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """Run the stages once for the whole module, in dvc.yaml's order, into one folder."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    p = write_tiny_params(tmp_path / "params.yaml")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_mlflow(monkeypatch, tmp_path)
        _run_all(p, tmp_path)
    return tmp_path


def _run_all(p: Path, tmp_path: Path) -> None:
    invoke(prepare, "--params", p, "--out", tmp_path / "data")
    invoke(classifier, "--params", p, "--data", tmp_path / "data", "--out", tmp_path / "classifier.pt", "--metrics", tmp_path / "classifier.json")
    invoke(
        train, "--params", p, "--data", tmp_path / "data", "--out", tmp_path / "model", "--log", tmp_path / "train_log.csv",
        "--schedule", tmp_path / "schedule.csv", "--resume-dir", tmp_path / "resume",
    )  # fmt: skip
    invoke(sample, "--params", p, "--model", tmp_path / "model", "--out", tmp_path / "samples")
    invoke(
        evaluate, "--params", p, "--data", tmp_path / "data", "--samples", tmp_path / "samples", "--model", tmp_path / "model",
        "--classifier", tmp_path / "classifier.pt", "--classifier-metrics", tmp_path / "classifier.json", "--out", tmp_path / "metrics.json",
        "--steps-csv", tmp_path / "steps.csv", "--nll-terms", tmp_path / "nll_terms.csv",
    )  # fmt: skip
    invoke(
        report, "--data", tmp_path / "data", "--model", tmp_path / "model", "--samples", tmp_path / "samples",
        "--metrics", tmp_path / "metrics.json", "--classifier-metrics", tmp_path / "classifier.json",
        "--train-log", tmp_path / "train_log.csv", "--schedule", tmp_path / "schedule.csv",
        "--steps-csv", tmp_path / "steps.csv", "--nll-terms", tmp_path / "nll_terms.csv", "--out", tmp_path / "reports",
    )  # fmt: skip


def test_prepare_writes_a_deterministic_split(pipeline: Path, tmp_path: Path):
    card = json.loads((pipeline / "data" / "card.json").read_text())
    assert card["source"] == "digits" and card["image_size"] == 8 and card["channels"] == 1
    assert card["train"]["count"] + card["test"]["count"] == 1797
    with np.load(pipeline / "data" / "train.npz") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (1, 8, 8)
    invoke(prepare, "--params", pipeline / "params.yaml", "--out", tmp_path / "again")
    assert (tmp_path / "again" / "card.json").read_text() == (pipeline / "data" / "card.json").read_text()


def test_train_writes_checkpoint_log_and_schedule(pipeline: Path):
    info = json.loads((pipeline / "model" / "train.json").read_text())
    assert info["step"] == 4 and info["params"]["T"] == 30
    log = (pipeline / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,images_per_s" and [row.split(",")[0] for row in log[1:]] == ["2", "4"]
    assert len((pipeline / "schedule.csv").read_text().splitlines()) == 31
    assert not list((pipeline / "resume").glob("*"))  # resume state is dropped once training finishes


def test_sample_writes_images_grid_and_strip_per_step_count(pipeline: Path):
    for steps in (30, 5):
        folder = pipeline / "samples" / f"steps-{steps}"
        with np.load(folder / "samples.npz") as f:
            assert f["images"].shape == (24, 1, 8, 8)
        assert len(list((folder / "images").glob("*.png"))) == 24
        strip = Image.open(folder / "denoise_strip.png")
        assert strip.size[0] > strip.size[1]  # 4 columns (x_T .. x_0) by 2 rows
    sampling = json.loads((pipeline / "samples" / "sampling.json").read_text())
    assert [(r["steps"], r["network_evals_per_sample"]) for r in sampling["runs"]] == [(30, 30), (5, 5)]
    assert sampling["T"] == 30
    comparison = Image.open(pipeline / "samples" / "steps_comparison.png")
    assert comparison.size[0] > 2 * comparison.size[1]  # 12 images wide, one row per step count


def test_samples_do_not_depend_on_batch_size(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_mlflow(monkeypatch, tmp_path)
    other = write_tiny_params(tmp_path / "other.yaml", sample={"batch_size": 5})
    invoke(sample, "--params", other, "--model", pipeline / "model", "--out", tmp_path / "samples5")
    for folder in ("steps-30", "steps-5"):
        with np.load(pipeline / "samples" / folder / "samples.npz") as a, np.load(tmp_path / "samples5" / folder / "samples.npz") as b:
            assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1  # rounding at the uint8 boundary


def test_evaluate_reports_metrics_with_real_floor(pipeline: Path):
    metrics = json.loads((pipeline / "metrics.json").read_text())
    for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"):
        assert np.isfinite(metrics[key]) and np.isfinite(metrics["real"][key])
    assert metrics["context"]["extractor"] == "ddpmlab-classifier"
    assert metrics["context"]["num_generated"] == metrics["context"]["num_real"] == 24
    assert metrics["real"]["fid"] < metrics["fid"]  # 4 training steps cannot beat real data
    assert set(metrics["by_steps"]) == {"30", "5"} and metrics["sample_steps"] == 30
    for row in metrics["by_steps"].values():
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["images_per_s"] == pytest.approx(1 / row["seconds_per_sample"], rel=1e-2)
    assert metrics["by_steps"]["5"]["network_evals_per_sample"] == 5
    assert metrics["fid"] == metrics["by_steps"]["30"]["fid"]  # the first listed step count is the headline
    steps_rows = (pipeline / "steps.csv").read_text().splitlines()
    assert steps_rows[0].startswith("steps,fid") and [r.split(",")[0] for r in steps_rows[1:]] == ["30", "5"]


def test_evaluate_reports_the_nll_bound_and_its_terms(pipeline: Path):
    nll = json.loads((pipeline / "metrics.json").read_text())["nll"]
    assert nll["images"] == 12 and nll["variance"] == "fixed_large"
    terms = [line.split(",") for line in (pipeline / "nll_terms.csv").read_text().splitlines()[1:]]
    assert [row[1] for row in (terms[0], terms[1], terms[-1])] == ["L_0", "L_1", "L_T"] and len(terms) == 31  # T + 1 terms
    bits = [float(row[2]) for row in terms]
    assert all(b >= 0 for b in bits)
    assert sum(bits) == pytest.approx(nll["bits_per_dim"], rel=1e-3)
    assert nll["decoder_L0"] > 0 and nll["kl_sum"] > 0 and nll["prior_LT"] > 0


def test_mlflow_holds_train_and_evaluation_runs(pipeline: Path):
    mlflow.set_tracking_uri(f"sqlite:///{pipeline / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddpmlab"])
    (train_run,) = [row for _, row in runs.iterrows() if row["tags.ddpmlab.stage"] == "train"]
    eval_runs = {row["params.sample_steps"]: row for _, row in runs.iterrows() if row["tags.ddpmlab.stage"] == "evaluate"}
    assert train_run["params.schedule"] == "linear" and train_run["params.T"] == "30" and train_run["params.train.lr"]
    assert set(eval_runs) == {"30", "5"}  # one row per step count
    for steps, eval_run in eval_runs.items():
        assert eval_run["params.sampler"] == "ddpm" and eval_run["params.variance"] == "fixed_large" and eval_run["params.eta"] == "None"
        assert eval_run["params.schedule"] == "linear" and np.isfinite(eval_run["metrics.fid"]) and np.isfinite(eval_run["metrics.nll_bits_per_dim"])
        assert eval_run["tags.mlflow.parentRunId"] == train_run["run_id"]
        assert eval_run["tags.mlflow.runName"] == f"linear-T30-ddpm{steps}"
    assert eval_runs["30"]["metrics.fid"] != eval_runs["5"]["metrics.fid"]
    assert np.isfinite(train_run["metrics.nll_bits_per_dim"])
    eval_run = eval_runs["30"]
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(train_run["run_id"], "loss")
    assert [m.step for m in history] == [2, 4]
    assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(train_run["run_id"], "checkpoint")}
    assert "samples/steps_comparison.png" in {a.path for a in client.list_artifacts(train_run["run_id"], "samples")}
    assert {"evaluation/steps.csv", "evaluation/nll_terms.csv"} <= {a.path for a in client.list_artifacts(train_run["run_id"], "evaluation")}
    assert "samples/grid.png" in {a.path for a in client.list_artifacts(eval_run["run_id"], "samples")}


def test_report_has_every_section_and_embeds_images(pipeline: Path):
    md = (pipeline / "reports" / "report.md").read_text()
    figures = ("loss.png", "schedule.png", "forward_strip.png", "real_grid.png", "samples_grid.png", "denoise_strip.png", "steps.png", "steps_comparison.png", "nll.png")
    for text in ("## Metrics", "## Sampling steps", "## Likelihood", "real data floor", "ddpmlab-classifier", "bits/dim", *(f"figures/{f}" for f in figures)):
        assert text in md
    for name in figures:
        assert (pipeline / "reports" / "figures" / name).stat().st_size > 0
    html = (pipeline / "reports" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)  # every figure inline: the HTML stands alone


def test_invalid_params_exit_with_the_config_code_before_work(tmp_path: Path):
    bad = write_tiny_params(tmp_path / "bad.yaml")
    bad.write_text(bad.read_text().replace("schedule: linear", "schedule: cosin"))
    result = CliRunner().invoke(prepare.main, ["--params", str(bad), "--out", str(tmp_path / "never")])
    assert result.exit_code == EXIT_CONFIG_ERROR
    assert "schedule: got 'cosin'; allowed: cosine, linear, quadratic, sigmoid" in result.output
    assert not (tmp_path / "never").exists()


class SimulatedCrash(Exception):
    pass


def test_interrupted_train_stage_resumes_to_identical_weights(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch

    isolate_mlflow(monkeypatch, tmp_path)
    params = write_tiny_params(tmp_path / "params.yaml", train={"steps": 6, "checkpoint_every": 2})

    def train_args(name: str) -> list:
        return [
            "--params", params, "--data", pipeline / "data", "--out", tmp_path / name, "--log", tmp_path / f"{name}.csv",
            "--schedule", tmp_path / f"{name}_schedule.csv", "--resume-dir", tmp_path / f"{name}_resume",
        ]  # fmt: skip

    invoke(train, *train_args("straight"))

    real_train = train.train

    def crash_after_step_4(state, *args, on_checkpoint=None, **kwargs):
        def checkpoint_then_crash(s):
            on_checkpoint(s)
            if s.step == 4:
                raise SimulatedCrash  # as if killed right after the step-4 checkpoint

        return real_train(state, *args, on_checkpoint=checkpoint_then_crash, **kwargs)

    monkeypatch.setattr(train, "train", crash_after_step_4)
    with pytest.raises(SimulatedCrash):
        CliRunner().invoke(train.main, [str(a) for a in train_args("resumed")], catch_exceptions=False)
    assert len(list((tmp_path / "resumed_resume").glob("*.pt"))) == 1
    monkeypatch.setattr(train, "train", real_train)
    result = invoke(train, *train_args("resumed"))
    assert "resuming training from step 4" in result.output

    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"
    steps = [row.split(",")[0] for row in (tmp_path / "resumed.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6"]  # the log survives the interruption


@pytest.mark.parametrize(
    "objective,sampler,train_overrides,variance",
    [("v", "ddim", {}, "fixed_large"), ("x0", "ddpm", {"weighting": "min_snr"}, "fixed_small"), ("eps", "ddpm", {"learn_variance": True}, "learned_range")],
)
def test_other_objectives_losses_and_samplers_run_through_the_stages(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective, sampler, train_overrides, variance):
    isolate_mlflow(monkeypatch, tmp_path)
    params = tmp_path / "params.yaml"
    write_tiny_params(
        params, train=train_overrides,
        sample={"sampler": sampler, "variance": variance, "eta": 0.0, "num_samples": 8, "batch_size": 8, "steps": [10]},
    )  # fmt: skip
    params.write_text(params.read_text().replace("objective: eps", f"objective: {objective}"))
    invoke(
        train, "--params", params, "--data", pipeline / "data", "--out", tmp_path / "model", "--log", tmp_path / "log.csv",
        "--schedule", tmp_path / "schedule.csv", "--resume-dir", tmp_path / "resume",
    )  # fmt: skip
    assert json.loads((tmp_path / "model" / "train.json").read_text())["params"]["objective"] == objective
    invoke(sample, "--params", params, "--model", tmp_path / "model", "--out", tmp_path / "samples")
    sampling = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert sampling["sampler"] == sampler and (sampling["eta"] == 0.0) == (sampler == "ddim")
    with np.load(tmp_path / "samples" / "steps-10" / "samples.npz") as f:
        assert f["images"].shape == (8, 1, 8, 8)
    invoke(
        evaluate, "--params", params, "--data", pipeline / "data", "--samples", tmp_path / "samples", "--model", tmp_path / "model",
        "--classifier", pipeline / "classifier.pt", "--classifier-metrics", pipeline / "classifier.json", "--out", tmp_path / "metrics.json",
        "--steps-csv", tmp_path / "steps.csv", "--nll-terms", tmp_path / "nll_terms.csv",
    )  # fmt: skip
    nll = json.loads((tmp_path / "metrics.json").read_text())["nll"]
    assert nll["variance"] == variance and np.isfinite(nll["bits_per_dim"])
