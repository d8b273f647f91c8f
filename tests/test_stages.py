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
    )  # fmt: skip
    invoke(
        report, "--data", tmp_path / "data", "--model", tmp_path / "model", "--samples", tmp_path / "samples",
        "--metrics", tmp_path / "metrics.json", "--classifier-metrics", tmp_path / "classifier.json",
        "--train-log", tmp_path / "train_log.csv", "--schedule", tmp_path / "schedule.csv", "--out", tmp_path / "reports",
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


def test_sample_writes_images_grid_and_strip(pipeline: Path):
    with np.load(pipeline / "samples" / "samples.npz") as f:
        assert f["images"].shape == (24, 1, 8, 8)
    assert len(list((pipeline / "samples" / "images").glob("*.png"))) == 24
    strip = Image.open(pipeline / "samples" / "denoise_strip.png")
    assert strip.size[0] > strip.size[1]  # 4 columns (x_T .. x_0) by 2 rows
    sampling = json.loads((pipeline / "samples" / "sampling.json").read_text())
    assert sampling["steps"] == 30 and sampling["network_evals_per_sample"] == 30


def test_samples_do_not_depend_on_batch_size(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_mlflow(monkeypatch, tmp_path)
    other = write_tiny_params(tmp_path / "other.yaml", sample={"batch_size": 5})
    invoke(sample, "--params", other, "--model", pipeline / "model", "--out", tmp_path / "samples5")
    with np.load(pipeline / "samples" / "samples.npz") as a, np.load(tmp_path / "samples5" / "samples.npz") as b:
        assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1  # rounding at the uint8 boundary


def test_evaluate_reports_metrics_with_real_floor(pipeline: Path):
    metrics = json.loads((pipeline / "metrics.json").read_text())
    for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"):
        assert np.isfinite(metrics[key]) and np.isfinite(metrics["real"][key])
    assert metrics["context"]["extractor"] == "ddpmlab-classifier"
    assert metrics["context"]["num_generated"] == metrics["context"]["num_real"] == 24
    assert metrics["real"]["fid"] < metrics["fid"]  # 4 training steps cannot beat real data


def test_mlflow_holds_train_and_evaluation_runs(pipeline: Path):
    mlflow.set_tracking_uri(f"sqlite:///{pipeline / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddpmlab"])
    by_stage = {row["tags.ddpmlab.stage"]: row for _, row in runs.iterrows()}
    train_run, eval_run = by_stage["train"], by_stage["evaluate"]
    assert train_run["params.schedule"] == "linear" and train_run["params.T"] == "30" and train_run["params.train.lr"]
    assert eval_run["params.sampler"] == "ddpm" and eval_run["params.sample_steps"] == "30"
    assert eval_run["params.schedule"] == "linear" and np.isfinite(eval_run["metrics.fid"])
    assert eval_run["tags.mlflow.parentRunId"] == train_run["run_id"]
    assert eval_run["tags.mlflow.runName"] == "linear-T30-ddpm30"
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(train_run["run_id"], "loss")
    assert [m.step for m in history] == [2, 4]
    assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(train_run["run_id"], "checkpoint")}
    assert "samples/grid.png" in {a.path for a in client.list_artifacts(train_run["run_id"], "samples")}
    assert "samples/grid.png" in {a.path for a in client.list_artifacts(eval_run["run_id"], "samples")}


def test_report_has_every_section_and_embeds_images(pipeline: Path):
    md = (pipeline / "reports" / "report.md").read_text()
    for text in ("## Metrics", "real data floor", "ddpmlab-classifier", "figures/samples_grid.png", "figures/forward_strip.png", "figures/schedule.png", "figures/loss.png", "figures/denoise_strip.png"):
        assert text in md
    for name in ("loss.png", "schedule.png", "forward_strip.png", "real_grid.png", "samples_grid.png", "denoise_strip.png"):
        assert (pipeline / "reports" / "figures" / name).stat().st_size > 0
    html = (pipeline / "reports" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6  # all six figures inline: the HTML stands alone


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


@pytest.mark.parametrize("objective,sampler", [("v", "ddim"), ("x0", "ddpm")])
def test_other_objectives_and_ddim_run_through_the_stages(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective, sampler):
    isolate_mlflow(monkeypatch, tmp_path)
    params = tmp_path / "params.yaml"
    write_tiny_params(params, sample={"sampler": sampler, "eta": 0.0, "num_samples": 8, "batch_size": 8})
    params.write_text(params.read_text().replace("objective: eps", f"objective: {objective}"))
    invoke(
        train, "--params", params, "--data", pipeline / "data", "--out", tmp_path / "model", "--log", tmp_path / "log.csv",
        "--schedule", tmp_path / "schedule.csv", "--resume-dir", tmp_path / "resume",
    )  # fmt: skip
    assert json.loads((tmp_path / "model" / "train.json").read_text())["params"]["objective"] == objective
    invoke(sample, "--params", params, "--model", tmp_path / "model", "--out", tmp_path / "samples")
    sampling = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert sampling["sampler"] == sampler and (sampling["eta"] == 0.0) == (sampler == "ddim")
    with np.load(tmp_path / "samples" / "samples.npz") as f:
        assert f["images"].shape == (8, 1, 8, 8)
