"""End to end: `dvc repro`, then four queued experiments run by two parallel workers
(`dvc exp run -S 'schedule=quadratic,cosine' -S 'T=30,40' --queue`, `dvc queue start -j 2`)
against the default SQLite MLflow store, in a temporary copy of the repository (tracked and
new files, so uncommitted work is tested too) with tiny params. Every run, metric and
artifact must reach MLflow; a `dvc repro` killed with SIGKILL mid-training resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import copy_project
from test_compare import table_rows

pytestmark = pytest.mark.e2e

# The tiny params' run plan (conftest.TINY_OVERRIDES): samplers [ddpm, dpmpp_2m] x steps [30, 5].
RUN_KEYS = ["ddpm-30", "ddpm-5", "dpmpp_2m-30", "dpmpp_2m-5"]


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict]:
    clone = copy_project(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `python` in dvc.yaml = this interpreter
        DVC_NO_ANALYTICS="1",
        DDPMLAB_CACHE=str(tmp_path / "cache"),
        DDPMLAB_CACHE_DIR=str(tmp_path / "execution-cache"),  # the `auto` probes' choices (nn.autotune)
        GIT_AUTHOR_NAME="ddpmlab test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="ddpmlab test", GIT_COMMITTER_EMAIL="test@example.invalid",
    )  # fmt: skip
    run(["git", "init", "-q", "-b", "main"], clone, env)
    run(["git", "add", "-A"], clone, env)
    run(["git", "commit", "-q", "-m", "tiny params"], clone, env)
    return clone, env


def test_repro_sampling_change_and_cosine_experiment(repo):
    clone, env = repo
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "repro"], clone, env)
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    assert {"fid", "is_mean", "kid_mean", "real_fid"} <= metrics.keys() and len(metrics) <= 15 and not [k for k in metrics if "@" in k]
    by_run = json.loads((clone / "reports" / "evaluation.json").read_text())["by_run"]
    assert set(by_run) == set(RUN_KEYS) and metrics["run"] == "ddpm-30" and metrics["fid"] == by_run["ddpm-30"]["fid"]
    assert (clone / "reports" / "report.html").is_file() and (clone / "reports" / "figures" / "comparison.png").is_file()
    assert (clone / "reports" / "fid_vs_nfe.csv").read_text().splitlines()[0] == "nfe,ddpm,ddim,euler_ancestral,plms,dpmpp_2m,dpmpp_3m,heun,ipndm,unipc,unipc_3,ddim_afs,plms_afs,dpmpp_2m_afs,dpmpp_3m_afs,heun_afs,ipndm_afs,unipc_afs,unipc_3_afs"
    assert json.loads(run([*dvc, "status", "--json"], clone, env)) == {}
    assert json.loads((clone / "models" / "ddpm" / "train.json").read_text())["execution"]["chosen_by"] in ("probe", "cache")
    assert json.loads((Path(env["DDPMLAB_CACHE_DIR"]) / "execution.json").read_text())["entries"]  # the probes' choices

    # Another machine, or the cache gone or broken: how a run executes is recorded, never a DVC param, so nothing reruns.
    moved = {**env, "DDPMLAB_CACHE_DIR": str(clone.parent / "empty-cache"), "OMP_NUM_THREADS": "1"}
    Path(env["DDPMLAB_CACHE_DIR"], "execution.json").write_text("{broken")
    for other in (env, moved):
        assert json.loads(run([*dvc, "status", "--json"], clone, other)) == {}
        assert "Data and pipelines are up to date" in run([*dvc, "repro"], clone, other)
    plots = json.loads(run([*dvc, "plots", "show", "--json", "-o", str(clone / "dvc_plots")], clone, env))["data"]
    assert {"training loss", "FID vs network evaluations", "noise schedule alpha-bar", "reports/figures/samples_grid.png", "reports/figures/comparison.png"} <= plots.keys()
    assert all(not entry.get("errors") for entries in plots.values() for entry in entries)

    # A sampling param re-samples without retraining.
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["sample"]["num_samples"] = 12
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([*dvc, "repro"], clone, env)
    assert "Stage 'train' didn't change, skipping" in out and "Running stage 'sample'" in out
    run(["git", "commit", "-q", "-am", "fewer samples"], clone, env)

    # Four experiments queued and run by two parallel workers in temporary copies of the repo,
    # all writing to the one SQLite store.
    run([*dvc, "exp", "run", "-S", "schedule=quadratic,cosine", "-S", "T=30,40", "--queue"], clone, env)
    run([*dvc, "queue", "start", "-j", "2"], clone, env)
    wait_for_queue(dvc, clone, env, timeout_s=1200)
    shown = json.loads(run([*dvc, "exp", "show", "--json"], clone, env))
    experiments = [exp for entry in shown for exp in (entry.get("experiments") or [])]
    assert len(experiments) == 4, experiments

    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddpmlab"])
    assert (runs["status"] == "FINISHED").all(), runs[["tags.mlflow.runName", "status"]]
    evaluations = runs[runs["tags.ddpmlab.stage"] == "evaluate"]
    by_model = evaluations.groupby(["params.schedule", "params.T"])["params.run_key"].apply(sorted).to_dict()
    # The baseline ran twice (24 then 12 samples); each queued experiment once; every (sampler, steps) is a run.
    expected = {("linear", "30"): sorted(RUN_KEYS * 2)} | {(s, t): sorted(RUN_KEYS) for s in ("quadratic", "cosine") for t in ("30", "40")}
    assert by_model == expected
    names = evaluations["params.schedule"] + "-T" + evaluations["params.T"] + "-seed0-" + evaluations["params.run_key"]
    assert (evaluations["tags.mlflow.runName"] == names).all()
    assert (evaluations["params.nfe"] == evaluations["params.sample_steps"]).all()
    assert evaluations["metrics.fid"].notna().all() and evaluations["metrics.nll_bits_per_dim"].notna().all()
    trains = runs[runs["tags.ddpmlab.stage"] == "train"]
    assert sorted(zip(trains["params.schedule"], trains["params.T"])) == sorted(expected)
    assert trains["params.train.lr"].notna().all()
    client = mlflow.tracking.MlflowClient()
    for run_id in trains["run_id"]:  # every training run has its whole loss curve and its artifacts
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [2, 4]
        logged = {a.path for folder in ("checkpoint", "report") for a in client.list_artifacts(run_id, folder)}
        assert {"checkpoint/model.pt", "checkpoint/train.json", "report/report.html"} <= logged
        downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/model.pt", dst_path=str(clone / "dl" / run_id))
        assert Path(downloaded).stat().st_size > 0
    for run_id in evaluations["run_id"]:
        assert client.list_artifacts(run_id), f"evaluation run {run_id} has no artifacts"
    # One registered version per training run (the re-sampled baseline was not retrained), the two workers'
    # registrations into the one store included, each tagged with its run's params and evaluated FID.
    versions = {v.run_id: v for v in client.search_model_versions("name = 'ddpmlab'")}
    assert versions.keys() == set(trains["run_id"]) and sorted(int(v.version) for v in versions.values()) == [1, 2, 3, 4, 5]
    for run_id, schedule, T in zip(trains["run_id"], trains["params.schedule"], trains["params.T"]):
        tags = versions[run_id].tags
        assert (tags["schedule"], tags["T"], tags["fid_run"]) == (schedule, T, "ddpm-30") and float(tags["fid"]) > 0
    queued = evaluations[evaluations["params.schedule"] != "linear"]
    assert queued["tags.dvc.exp_name"].notna().all() and queued["tags.dvc.exp_name"].nunique() == 4
    train_ids = set(trains["run_id"])
    assert set(evaluations["tags.mlflow.parentRunId"]) <= train_ids  # every evaluation nests under its training run
    assert all(len(commit) == 40 for commit in queued["tags.mlflow.source.git.commit"])
    artifacts = Path(mlflow.get_experiment_by_name("ddpmlab").artifact_location.removeprefix("file://"))
    assert artifacts == clone / "mlruns" and artifacts.is_dir()

    # `ddpmlab compare` on what the queue left: every schedule at every sampler and step count, one row each, and the
    # baseline's two evaluations both: 24 and 12 samples are two configs (a protocol change) of one trained model.
    run([sys.executable, "-m", "ddpmlab.cli", "compare"], clone, env)
    header, *body = table_rows((clone / "reports" / "compare.md").read_text())  # the table of every evaluation
    columns = [header.index(name) for name in ("schedule", "T", "sampler", "steps")]
    assert sorted(tuple(r[i] for i in columns) for r in body) == sorted(
        (s, t, sampler, n) for s, t in expected for sampler in ("ddpm", "dpmpp_2m") for n in ("30", "5") for _ in range(2 if s == "linear" else 1)
    )


def wait_for_queue(dvc: list[str], clone: Path, env: dict, timeout_s: float) -> None:
    """Poll `dvc queue status` until no experiment is queued or running; fail on a failed one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run([*dvc, "queue", "status"], clone, env)
        assert "Failed" not in status, status
        if "Queued" not in status and "Running" not in status:
            return
        time.sleep(3)
    pytest.fail(f"queued experiments still running after {timeout_s}s:\n{status}")


def test_folder_source_is_a_dvc_dependency_so_a_new_image_reruns_prepare(repo):
    """`data.root` is templated into prepare's deps: adding an image makes prepare (and so the rest) stale."""
    from PIL import Image

    clone, env = repo
    dvc = [sys.executable, "-m", "dvc"]
    for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        for i in range(6):
            (clone / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), colour).save(clone / "images" / label / f"{i}.png")
    run([*dvc, "exp", "run", "prepare", "-S", "data.source=folder", "-S", "data.root=images"], clone, env)
    card = json.loads((clone / "data" / "prepared" / "card.json").read_text())
    assert card["classes"] == ["blue", "red"] and card["train"]["count"] + card["test"]["count"] == 12
    assert json.loads(run([*dvc, "status", "prepare", "--json"], clone, env)) == {}
    Image.new("RGB", (10, 10), (0, 255, 0)).save(clone / "images" / "red" / "new.png")
    status = json.loads(run([*dvc, "status", "prepare", "--json"], clone, env))
    assert "prepare" in status and any("images" in json.dumps(change) for change in status["prepare"])


def test_dvc_repro_killed_mid_training_resumes_from_its_checkpoint(repo):
    """DVC deletes a stage's outputs before running it; the resume state lives outside them
    (.resume/), so `dvc repro` after a SIGKILL of the whole `dvc repro` goes on from there."""
    clone, env = repo
    dvc = [sys.executable, "-m", "dvc"]
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"].update(steps=100, batch_size=32, checkpoint_every=10, log_every=10)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-q", "-am", "longer training"], clone, env)

    process = subprocess.Popen([*dvc, "repro", "train"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(clone.glob(".resume/*/step-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage it runs, as a crash or an OOM kill would
    output = process.communicate()[0]
    assert process.returncode == -signal.SIGKILL, f"dvc repro ended before it was killed:\n{output[-3000:]}"

    out = run([*dvc, "repro", "train"], clone, env)
    assert "resuming training from step" in out, out[-3000:]
    assert json.loads((clone / "models" / "ddpm" / "train.json").read_text())["step"] == 100
    assert json.loads(run([*dvc, "status", "train", "--json"], clone, env)) == {}
    assert not list(clone.glob(".resume/*/step-*.pt"))
