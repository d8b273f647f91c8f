"""Every stage through click's CliRunner with tiny params, chained as dvc.yaml chains them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from stages import classifier, evaluate, prepare, sample, train

from conftest import evaluate_args, invoke, isolate_stores, run_pipeline, write_tiny_params
from ddpmlab.host import machine as host_machine
from ddpmlab.pipeline import training_run
from ddpmlab.pipeline.stage_io import EXIT_CONFIG_ERROR


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """Run the stages once for the whole module, in dvc.yaml's order, into one folder."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    p = write_tiny_params(tmp_path / "params.yaml")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_stores(monkeypatch, tmp_path)
        run_pipeline(p, tmp_path)
    return tmp_path


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
    assert [p.name for p in (pipeline / "model" / "snapshots").iterdir()] == ["step-0000002.pt"]  # EMA every checkpoint_every steps


def test_train_and_sample_record_how_they_ran(pipeline: Path):
    """train.precision auto (timed: a probe or this machine's cached one) and sample.precision fp32 (as set; its
    channels_last auto): the resolved choice, how it was made and the machine, in train.json and sampling.json."""
    trained = json.loads((pipeline / "model" / "train.json").read_text())["execution"]
    sampled = json.loads((pipeline / "samples" / "sampling.json").read_text())["execution"]
    machine = {"device": "cpu", "processor": host_machine.cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    for record in (trained, sampled):
        assert {k: record[k] for k in machine} == machine
        assert record["chosen_by"] in ("probe", "cache") and record["compile"] is False  # 4 tiny steps: compile is never worth it
        assert record["label"] in record["probe_images_per_s"]
    assert trained["precision"] in ("fp32", "bf16") and len(trained["probe_images_per_s"]) == 4
    assert sampled["precision"] == "fp32" and set(sampled["probe_images_per_s"]) == {"fp32 nchw", "fp32 channels_last"}


RUNS = ["ddpm-30", "ddpm-5", "dpmpp_2m-30", "dpmpp_2m-5"]  # tiny params: every sampler x step count, sampler first


def test_sample_writes_images_grid_and_strip_per_run(pipeline: Path):
    for key in RUNS:
        folder = pipeline / "samples" / key
        with np.load(folder / "samples.npz") as f:
            assert f["images"].shape == (24, 1, 8, 8)
        assert len(list((folder / "images").glob("*.png"))) == 24
        strip = Image.open(folder / "denoise_strip.png")
        assert strip.size[0] > strip.size[1]  # 4 columns (x_T .. x_0) by 2 rows
    sampling = json.loads((pipeline / "samples" / "sampling.json").read_text())
    assert [(r["key"], r["sampler"], r["steps"], r["nfe"]) for r in sampling["runs"]] == [
        ("ddpm-30", "ddpm", 30, 30), ("ddpm-5", "ddpm", 5, 5), ("dpmpp_2m-30", "dpmpp_2m", 30, 30), ("dpmpp_2m-5", "dpmpp_2m", 5, 5)]  # fmt: skip
    assert sampling["runs"][0]["options"] == {"variance": "fixed_large"} and sampling["runs"][2]["options"] == {}
    assert sampling["T"] == 30
    comparison = Image.open(pipeline / "samples" / "comparison.png")
    assert comparison.size[0] > comparison.size[1]  # a row per sampler, a column per step count


def test_samples_do_not_depend_on_batch_size(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_stores(monkeypatch, tmp_path)
    other = write_tiny_params(tmp_path / "other.yaml", sample={"batch_size": 5})
    invoke(sample, "--params", other, "--model", pipeline / "model", "--out", tmp_path / "samples5")
    for folder in RUNS:
        with np.load(pipeline / "samples" / folder / "samples.npz") as a, np.load(tmp_path / "samples5" / folder / "samples.npz") as b:
            assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1  # rounding at the uint8 boundary


def test_evaluate_reports_metrics_against_both_splits_with_real_floors(pipeline: Path):
    metrics = json.loads((pipeline / "evaluation.json").read_text())
    for key in (
        "fid",
        "fid_train",
        "is_mean",
        "is_std",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "copy_rate",
        "nn_ratio",
        "copy_rate_pixels",
    ):
        assert np.isfinite(metrics[key]) and np.isfinite(metrics["real"][key])
    assert metrics["real"]["nn_ratio"] == metrics["real"]["nn_ratio_pixels"] == 1.0  # the held-out baseline against itself
    memorised = metrics["memorisation"]
    assert (
        memorised["run"] == "ddpm-30"
        and len(memorised["closest"]) == 12
        and set(memorised["histograms"]) == {"features", "pixels"}
    )
    assert np.isfinite(metrics["real"]["fid_train"]) and np.isfinite(metrics["real"]["recall_train"])
    assert metrics["real"]["fid"] < metrics["fid"] and metrics["real"]["fid_train"] < metrics["fid_train"]  # 4 training steps cannot beat real data
    assert list(metrics["by_run"]) == RUNS and metrics["headline_run"] == "ddpm-30"
    for row in metrics["by_run"].values():
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and 0 <= row["precision_train"] <= 1
        assert row["images_per_s"] == pytest.approx(1 / row["seconds_per_sample"], rel=1e-2)
    assert metrics["by_run"]["dpmpp_2m-5"]["nfe"] == 5
    assert metrics["fid"] == metrics["by_run"]["ddpm-30"]["fid"]  # the first run of the plan is the headline
    for scores in (metrics["by_run"]["ddpm-30"], metrics["real"]):  # the bias-corrected FID, with the FID's own standard error
        assert scores["fid_inf"] < scores["fid"] and scores["fid_inf_ci_high"] - scores["fid_inf"] == pytest.approx(scores["fid_ci_high"] - scores["fid"], abs=2e-5)
    steps_rows = (pipeline / "steps.csv").read_text().splitlines()
    assert steps_rows[0].startswith("key,sampler,spacing,steps,nfe,guidance,fid,fid_ci_low,fid_ci_high,fid_train,fid_train_ci_low") and [r.split(",")[0] for r in steps_rows[1:]] == RUNS
    nfe_rows = (pipeline / "fid_vs_nfe.csv").read_text().splitlines()
    assert nfe_rows[0] == "nfe,ddpm,ddim,euler_ancestral,plms,dpmpp_2m,dpmpp_3m,heun,ipndm,unipc,unipc_3,ddim_afs,plms_afs,dpmpp_2m_afs,dpmpp_3m_afs,heun_afs,ipndm_afs,unipc_afs,unipc_3_afs"
    assert [r.split(",")[0] for r in nfe_rows[1:]] == ["5", "30"]
    assert float(nfe_rows[1].split(",")[5]) == metrics["by_run"]["dpmpp_2m-5"]["fid"] and nfe_rows[1].split(",")[2] == ""  # ddim not run


def test_metrics_json_is_flat_and_short_for_dvc_exp_show(pipeline: Path):
    """The DVC metric holds the headline run's scalars only (at most 15: `dvc exp show` puts each in a column ahead
    of the params); every run's scores live in evaluation.json and steps.csv."""
    metrics = json.loads((pipeline / "metrics.json").read_text())
    details = json.loads((pipeline / "evaluation.json").read_text())
    assert list(metrics) == [
        "run", "fid", "fid_ci_low", "fid_ci_high", "fid_train", "is_mean", "kid_mean", "precision", "recall", "copy_rate", "copy_rate_pixels",
        "nll_bpd", "real_fid",
    ]  # fmt: skip
    assert metrics["run"] == "ddpm-30" and all(isinstance(v, (int, float)) for k, v in metrics.items() if k != "run")
    assert metrics["real_fid"] == details["real"]["fid"] and metrics["copy_rate"] == details["by_run"]["ddpm-30"]["copy_rate"]
    assert metrics["nll_bpd"] == details["nll"]["bits_per_dim"] and metrics["fid"] == details["by_run"]["ddpm-30"]["fid"]


def test_evaluate_scores_every_checkpoint_over_training(pipeline: Path):
    rows = [line.split(",") for line in (pipeline / "fid_over_training.csv").read_text().splitlines()]
    assert rows[0] == ["step", "fid", "fid_train", "is_mean", "precision", "recall"]
    assert [row[0] for row in rows[1:]] == ["2", "4"]  # the snapshot, then the final model
    details = json.loads((pipeline / "evaluation.json").read_text())
    over, settings = details["over_training"], details["over_training_settings"]
    assert (settings["images"], settings["sample_steps"]) == (8, 5) and list(over["by_step"]) == ["2", "4"]
    assert all(np.isfinite(point["fid"]) and np.isfinite(point["fid_train"]) for point in over["by_step"].values())


def test_evaluate_records_the_protocol(pipeline: Path):
    protocol = json.loads((pipeline / "evaluation.json").read_text())["protocol"]
    card = json.loads((pipeline / "data" / "card.json").read_text())
    assert protocol["feature_extractor"] == "classifier" and len(protocol["extractor_weights_sha256"]) == 64
    assert protocol["num_generated"] == 24 and protocol["num_real"] == {"test": 24, "train": 24}  # the floor uses the same N
    assert protocol["prc_images"] == {"test": 24, "train": 24}  # precision / recall: equally many on both sides
    assert protocol["reference_images"] == {"test": card["test"]["count"], "train": card["train"]["count"]}
    assert (protocol["checkpoint_step"], protocol["weights"], protocol["model_mode"]) == (4, "ema", "eval")
    assert (protocol["seed"], protocol["kid_subset_size"], protocol["isc_splits"], protocol["reference_augmented"]) == (0, 8, 4, False)


def test_a_second_evaluation_reuses_the_cached_reference_features(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_stores(monkeypatch, tmp_path)
    monkeypatch.setenv("DDPMLAB_CACHE", str(pipeline / "cache"))  # the pipeline fixture's cache
    result = invoke(evaluate, *evaluate_args(pipeline / "params.yaml", pipeline / "data", pipeline / "samples", pipeline / "model", pipeline, tmp_path))
    assert "(2 cached, 0 extracted)" in result.output
    assert json.loads((tmp_path / "evaluation.json").read_text())["by_run"] == json.loads((pipeline / "evaluation.json").read_text())["by_run"]


def test_classifier_below_the_accuracy_threshold_fails_its_stage(pipeline: Path, tmp_path: Path):
    strict = write_tiny_params(tmp_path / "strict.yaml", classifier={"steps": 3, "min_accuracy": 0.999})
    args = ["--params", strict, "--data", pipeline / "data", "--out", tmp_path / "c.pt", "--metrics", tmp_path / "c.json"]
    result = CliRunner().invoke(classifier.main, [str(a) for a in args])
    assert result.exit_code == 1
    assert "is below classifier.min_accuracy=0.999" in result.output and "evaluate.feature_extractor=inception-v3-compat" in result.output
    assert (tmp_path / "c.json").is_file()  # written first, so the failure can be inspected
    # Not the extractor (Inception is): the same classifier passes.
    other = write_tiny_params(tmp_path / "other.yaml", classifier={"steps": 3, "min_accuracy": 0.999}, evaluate={"feature_extractor": "inception-v3-compat"})
    invoke(classifier, "--params", other, "--data", pipeline / "data", "--out", tmp_path / "c.pt", "--metrics", tmp_path / "c.json")


def test_offline_inception_fails_sample_before_any_sampling(pipeline: Path, tmp_path: Path, offline: Path):
    params = write_tiny_params(tmp_path / "params.yaml", evaluate={"feature_extractor": "inception-v3-compat"})
    result = CliRunner().invoke(sample.main, ["--params", str(params), "--model", str(pipeline / "model"), "--out", str(tmp_path / "samples")])
    assert result.exit_code == 1
    assert "weights-inception-2015-12-05-6726825d.pth" in result.output and str(offline) in result.output
    assert "evaluate.feature_extractor=classifier" in result.output
    assert not (tmp_path / "samples").exists()  # nothing was sampled
    result = CliRunner().invoke(evaluate.main, [str(a) for a in evaluate_args(params, pipeline / "data", pipeline / "samples", pipeline / "model", pipeline, tmp_path)])
    assert result.exit_code == 1 and "could not be downloaded" in result.output
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "evaluation.json").exists()


def test_evaluate_with_inception_weights_from_a_local_file(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: Path, random_inception_weights: Path):
    """The whole Inception path with a randomly initialised weights file (numbers meaningless)."""
    isolate_stores(monkeypatch, tmp_path)
    data = tmp_path / "data"  # a few images: Inception at 299x299 costs ~0.15 s per image on a CPU
    data.mkdir()
    for split, count in (("train", 40), ("test", 20)):
        with np.load(pipeline / "data" / f"{split}.npz") as f:
            np.savez(data / f"{split}.npz", images=f["images"][:count], labels=f["labels"][:count])
    params = write_tiny_params(
        tmp_path / "params.yaml", sample={"num_samples": 24}, evaluate={"feature_extractor": "inception-v3-compat", "inception_weights": str(random_inception_weights), "nll_images": 0}
    )
    invoke(evaluate, *evaluate_args(params, data, pipeline / "samples", pipeline / "model", pipeline, tmp_path))
    metrics = json.loads((tmp_path / "evaluation.json").read_text())
    assert metrics["protocol"]["feature_extractor"] == "inception-v3-compat"
    assert metrics["protocol"]["num_real"] == {"test": 24, "train": 20} and metrics["protocol"]["reference_images"] == {"test": 20, "train": 40}
    assert all(np.isfinite(metrics["by_run"]["ddpm-5"][k]) for k in ("fid", "fid_train", "is_mean", "kid_mean", "precision"))


def test_evaluate_reports_the_nll_bound_and_its_terms(pipeline: Path):
    nll = json.loads((pipeline / "evaluation.json").read_text())["nll"]
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
    eval_runs = {row["params.run_key"]: row for _, row in runs.iterrows() if row["tags.ddpmlab.stage"] == "evaluate"}
    assert train_run["params.schedule"] == "linear" and train_run["params.T"] == "30" and train_run["params.train.lr"]
    assert set(eval_runs) == set(RUNS)  # one run per (sampler, steps)
    for key, eval_run in eval_runs.items():
        sampler, steps = key.rsplit("-", 1)
        assert (eval_run["params.sampler"], eval_run["params.sample_steps"], eval_run["params.nfe"], eval_run["params.spacing"]) == (sampler, steps, steps, "uniform")
        variance = eval_run["params.sampler.variance"]  # the sampler's own options only: dpmpp_2m has none
        assert (variance == "fixed_large" if sampler == "ddpm" else pd.isna(variance)) and float(eval_run["metrics.nfe"]) == int(steps)
        assert eval_run["params.schedule"] == "linear" and np.isfinite(eval_run["metrics.fid"]) and np.isfinite(eval_run["metrics.nll_bits_per_dim"])
        assert eval_run["tags.mlflow.parentRunId"] == train_run["run_id"]
        assert 0 <= eval_run["metrics.copy_rate"] <= 1 and 0 <= eval_run["metrics.copy_rate_pixels"] <= 1 and eval_run["metrics.nn_ratio"] > 0
        assert eval_run["tags.mlflow.runName"] == f"linear-T30-seed0-{key}"
        assert eval_run["metrics.fid_ci_low"] <= eval_run["metrics.fid"] <= eval_run["metrics.fid_ci_high"]
        assert eval_run["tags.ddpmlab.config_id"] == train_run["tags.ddpmlab.config_id"] and len(train_run["tags.ddpmlab.config_id"]) == 12
        assert eval_run["tags.ddpmlab.config_run"] == f"{train_run['tags.ddpmlab.config_id']} {key}"
        assert eval_run["tags.ddpmlab.config_label"] == train_run["tags.ddpmlab.config_label"] and "T=30" in train_run["tags.ddpmlab.config_label"]
        assert eval_run["tags.ddpmlab.replicate"] == "train.seed=0 sample.seed=1"
        for task, record in (("train", json.loads((pipeline / "model" / "train.json").read_text())["execution"]),
                             ("sample", json.loads((pipeline / "samples" / "sampling.json").read_text())["execution"])):  # fmt: skip
            for name in ("precision", "channels_last", "compile", "threads", "processor", "device", "torch"):
                assert eval_run[f"tags.ddpmlab.execution.{task}.{name}"] == str(record[name])
                assert train_run[f"tags.ddpmlab.execution.{task}.{name}"] == str(record[name])  # sample's too, once sampled
        protocol = ("feature_extractor", "num_generated", "num_real.test", "reference_splits", "checkpoint_step", "weights", "model_mode", "seed")
        assert [eval_run[f"params.{k}"] for k in protocol] == ["classifier", "24", "24", "test,train", "4", "ema", "eval", "0"]
        assert np.isfinite(eval_run["metrics.fid_train"]) and np.isfinite(eval_run["metrics.real_fid_train"])
        assert len(eval_run["params.extractor_weights_sha256"]) == 64 and len(eval_run["params.reference_keys.train"]) == 16
    assert eval_runs["ddpm-30"]["metrics.fid"] != eval_runs["ddpm-5"]["metrics.fid"] != eval_runs["dpmpp_2m-5"]["metrics.fid"]
    assert np.isfinite(train_run["metrics.nll_bits_per_dim"])
    eval_run = eval_runs["ddpm-30"]
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(train_run["run_id"], "loss")
    assert [m.step for m in history] == [2, 4]
    assert [m.step for m in client.get_metric_history(train_run["run_id"], "snapshot_fid")] == [2, 4]  # FID over training
    assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(train_run["run_id"], "checkpoint")}
    assert "samples/comparison.png" in {a.path for a in client.list_artifacts(train_run["run_id"], "samples")}
    assert {"evaluation/steps.csv", "evaluation/nll_terms.csv"} <= {a.path for a in client.list_artifacts(train_run["run_id"], "evaluation")}
    assert "samples/grid.png" in {a.path for a in client.list_artifacts(eval_run["run_id"], "samples")}
    assert train_run["metrics.fid"] == eval_runs["ddpm-30"]["metrics.fid"]  # the headline, so the UI's chart view shows an fid chart per model
    report_files = {a.path for a in client.list_artifacts(train_run["run_id"], "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= report_files
    report_figures = {a.path for a in client.list_artifacts(train_run["run_id"], "report/figures")}
    assert {"report/figures/samples_grid.png", "report/figures/memorisation_panel.png", "report/figures/memorisation_distances.png"} <= report_figures
    experiment = mlflow.get_experiment_by_name("ddpmlab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens in the UI's model-training view
    assert experiment.artifact_location == (pipeline / "mlruns").as_uri()  # beside the store, not in the working directory


def test_report_has_every_section_and_embeds_images(pipeline: Path):
    md = (pipeline / "reports" / "report.md").read_text()
    figures = ("loss.png", "schedule.png", "forward_strip.png", "real_grid.png", "samples_grid.png", "denoise_strip.png", "nfe.png", "comparison.png",
               "memorisation_panel.png", "memorisation_distances.png", "nll.png", "fid_over_training.png", "grids.png")  # fmt: skip
    for text in ("Endpoint error (deterministic runs)", "## Metrics", "## Sampling", "lowest FID", "tied with it", "Headline: ddpm-30 scores FID ", "the real-data floor", "## Memorisation", "held-out test images", "## Likelihood", "real floor vs test", "generated vs train", "50,000", "EMA weights at training step 4", "bits/dim", *(f"figures/{f}" for f in figures)):
        assert text in md
    for name in figures:
        assert (pipeline / "reports" / "figures" / name).stat().st_size > 0
    html = (pipeline / "reports" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)  # every figure inline: the HTML stands alone
    assert "better than real" not in md.replace("not the same as being better than real data", "")
    evaluation = json.loads((pipeline / "evaluation.json").read_text())
    head = evaluation["by_run"]["ddpm-30"]
    shown = f"{head['fid']:.4g} [{head['fid_ci_low']:.4g}, {head['fid_ci_high']:.4g}]"
    assert f"Headline: ddpm-30 scores FID {shown}" in md and md.count(shown) >= 3  # headline, metrics table, sweep table
    comparisons = evaluation["comparisons"]
    assert comparisons["correction"] == "bh" and set(comparisons["vs_real"]) == set(evaluation["by_run"])
    for entry in comparisons["vs_real"].values():
        assert 0 < entry["p"] <= entry["q"] <= 1 and entry["detectable_fid"] > 0 and entry["verdict"]
        assert np.isfinite(entry["fid"]) and (entry["verdict"] == "differs from real data") == entry["detected"]
    assert "vs real data" in md and comparisons["vs_real_family"] in md and comparisons["by_budget_family"] in md


def test_a_cached_choice_writes_the_same_model_byte_for_byte(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The pipeline's train stage probed (or took the session's cached choice); a rerun now takes the cache. How
    the choice was made and the probe's timings live in train.json, never in model.pt: the same choice gives
    the same bytes."""
    isolate_stores(monkeypatch, tmp_path)
    invoke(train, "--params", pipeline / "params.yaml", "--data", pipeline / "data", "--out", tmp_path / "model", "--log", tmp_path / "log.csv",
           "--schedule", tmp_path / "schedule.csv", "--resume-dir", tmp_path / "resume")  # fmt: skip
    assert json.loads((tmp_path / "model" / "train.json").read_text())["execution"]["chosen_by"] == "cache"
    assert (tmp_path / "model" / "model.pt").read_bytes() == (pipeline / "model" / "model.pt").read_bytes()


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

    isolate_stores(monkeypatch, tmp_path)
    params = write_tiny_params(tmp_path / "params.yaml", train={"steps": 6, "checkpoint_every": 2})

    def train_args(name: str) -> list:
        return [
            "--params", params, "--data", pipeline / "data", "--out", tmp_path / name, "--log", tmp_path / f"{name}.csv",
            "--schedule", tmp_path / f"{name}_schedule.csv", "--resume-dir", tmp_path / f"{name}_resume",
        ]  # fmt: skip

    invoke(train, *train_args("straight"))

    real_train = training_run.train  # the loop the stage's library half calls

    def crash_after_step_4(state, *args, on_checkpoint=None, **kwargs):
        def checkpoint_then_crash(s):
            on_checkpoint(s)
            if s.step == 4:
                raise SimulatedCrash  # as if killed right after the step-4 checkpoint

        return real_train(state, *args, on_checkpoint=checkpoint_then_crash, **kwargs)

    monkeypatch.setattr(training_run, "train", crash_after_step_4)
    with pytest.raises(SimulatedCrash):
        CliRunner().invoke(train.main, [str(a) for a in train_args("resumed")], catch_exceptions=False)
    assert len(list((tmp_path / "resumed_resume").glob("*/step-*.pt"))) == 2  # train.keep_checkpoints
    monkeypatch.setattr(training_run, "train", real_train)
    result = invoke(train, *train_args("resumed"))
    assert "resuming training from step 4" in result.output

    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"
    steps = [row.split(",")[0] for row in (tmp_path / "resumed.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6"]  # the log survives the interruption
    for name in ("step-0000002.pt", "step-0000004.pt"):  # so do the EMA snapshots taken before it
        straight_ema = torch.load(tmp_path / "straight" / "snapshots" / name, weights_only=True)["ema"]
        resumed_ema = torch.load(tmp_path / "resumed" / "snapshots" / name, weights_only=True)["ema"]
        assert all(torch.equal(straight_ema[k], resumed_ema[k]) for k in straight_ema)


@pytest.mark.parametrize(
    "objective,sampler,train_overrides,variance",
    [("v", "ddim", {}, "fixed_large"), ("x0", "ddpm", {"weighting": "min_snr"}, "fixed_small"), ("eps", "ddpm", {"learn_variance": True}, "learned_range")],
)
def test_other_objectives_losses_and_samplers_run_through_the_stages(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective, sampler, train_overrides, variance):
    isolate_stores(monkeypatch, tmp_path)
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
    assert [(r["sampler"], r["options"]) for r in sampling["runs"]] == [(sampler, {"ddim": {"eta": 0.0}, "ddpm": {"variance": variance}}[sampler])]
    with np.load(tmp_path / "samples" / f"{sampler}-10" / "samples.npz") as f:
        assert f["images"].shape == (8, 1, 8, 8)
    invoke(evaluate, *evaluate_args(params, pipeline / "data", tmp_path / "samples", tmp_path / "model", pipeline, tmp_path))
    nll = json.loads((tmp_path / "evaluation.json").read_text())["nll"]
    assert nll["variance"] == variance and np.isfinite(nll["bits_per_dim"])
