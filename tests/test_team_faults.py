"""Faults against the real team stack (PostgreSQL, SeaweedFS, `mlflow server` with logins), with
nothing lost: the server down mid-training for longer than the client's retry budget, PostgreSQL
restarting mid-run, the object store down when artifacts are logged, and stages that start while
the server is down. The stages run as subprocesses, as DVC runs them.

Each check compares what the server holds with the stage's local files (``train_log.csv``,
``steps.csv``), which stay the source of truth."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, evaluate_args, needs_postgresql, prepare_inputs, report_args, train_args, write_tiny_params

STAGE_TIMEOUT_S = 300
pytestmark = [needs_postgresql, pytest.mark.usefixtures("team_stack", "signed_in_as_writer")]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start_stage(name: str, args: list, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", f"stages.{name}", *map(str, args)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def run_stage(name: str, args: list, env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    process = start_stage(name, args, env, log)
    process.wait(timeout=STAGE_TIMEOUT_S)
    return subprocess.CompletedProcess(process.args, process.returncode, log.read_text())


def sync(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "ddpmlab.cli", "tracking", "sync", "--wait", "120"], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def client_env(stack, writer: tuple[str, str], folder: Path, wait_s: float) -> dict[str, str]:
    user, password = writer
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return env | {
        "MLFLOW_TRACKING_URI": stack.tracking_uri, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
        "DDPMLAB_JOURNAL_DIR": str(folder / "journal"), "DDPMLAB_CACHE": str(folder / "cache"), "DDPMLAB_TRACKING_WAIT_S": str(wait_s),
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def train_runs(client: MlflowClient, seed: int) -> list:
    """The training runs of ``train.seed = seed`` (each test trains with its own seed)."""
    exp = client.get_experiment_by_name("ddpmlab")
    return client.search_runs([exp.experiment_id], f"tags.`ddpmlab.stage` = 'train' AND params.`train.seed` = '{seed}'") if exp else []


def train_run(client: MlflowClient, seed: int) -> str:
    runs = train_runs(client, seed)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0].info.run_id


def assert_history_matches_log(client: MlflowClient, run_id: str, log_csv: Path) -> int:
    """Every row of train_log.csv is on the server, once, with its step and value; returns the count."""
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    for key in ("loss", "lr", "images_per_s"):
        history = sorted((p.step, p.value) for p in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == [int(r["step"]) for r in rows], key
        for (_, value), row in zip(history, rows):
            assert value == pytest.approx(float(row[key]), rel=1e-5, abs=0.06 if key == "images_per_s" else 1e-6), key
    return len(rows)


def long_training(folder: Path, seed: int) -> Path:
    """A tiny model trained long enough (about 20-40 s on 2 cores) for a fault to land mid-run,
    logging every step."""
    return write_tiny_params(folder / "params.yaml", train={"steps": 400, "log_every": 1, "checkpoint_every": 100, "seed": seed}, evaluate={"snapshot_samples": 0})


def train_through(fault: Callable[[subprocess.Popen, Path], None], stack, writer, tmp_path: Path, seed: int) -> tuple[MlflowClient, str]:
    """Run the train stage as a subprocess, call ``fault(process, folder)`` once the server has its
    first loss points, then check that the stage ended well and that the server holds every row of
    train_log.csv, once; the services are started again whatever happens."""
    params = long_training(tmp_path, seed)
    env = client_env(stack, writer, tmp_path, wait_s=180)
    prepare_inputs(params, tmp_path)
    client = MlflowClient(stack.tracking_uri)
    process = start_stage("train", train_args(params, tmp_path, tmp_path), env, tmp_path / "train.out")
    try:
        wait_for(lambda: any(r.data.metrics.get("loss") is not None for r in train_runs(client, seed)), 120, "the first loss points on the server")
        fault(process, tmp_path)
        assert process.wait(timeout=STAGE_TIMEOUT_S) == 0, (tmp_path / "train.out").read_text()
    finally:
        if process.poll() is None:
            process.kill()
        for name in ("postgres", "object_store", "mlflow"):  # whatever the fault stopped (no-op for a running one)
            stack.start_service(name)
    assert "Traceback" not in (tmp_path / "train.out").read_text()
    run_id = train_run(client, seed)
    found = assert_history_matches_log(client, run_id, tmp_path / "train_log.csv")
    assert found == 400 and client.get_run(run_id).info.status == "FINISHED"
    assert not list((tmp_path / "journal").glob("*.jsonl"))  # all sent, nothing left behind
    print(f"\n{seed}: 400 of 400 loss, lr and images_per_s points on the server, 0 lost")  # for the write-up (pytest -s)
    return client, run_id


def test_the_server_down_mid_training_for_longer_than_the_retry_budget_loses_nothing(team_stack, team_writer, tmp_path: Path):
    def outage(process: subprocess.Popen, folder: Path) -> None:
        team_stack.stop_service("mlflow")
        down_at = time.monotonic()
        wait_for(lambda: (folder / "train_log.csv").exists() or process.poll() is not None, 180, "training to end with the server down")
        trained_s = time.monotonic() - down_at
        # Longer than MLflow's own retries of one call (MLFLOW_HTTP_REQUEST_MAX_RETRIES) and the outbox's longest backoff.
        time.sleep(max(0.0, 40 - (time.monotonic() - down_at)))
        assert process.poll() is None, (folder / "train.out").read_text()  # trained, now waiting for the server: not crashed
        team_stack.start_service("mlflow")
        print(f"\nMLflow server down {time.monotonic() - down_at:.0f} s; training ended {trained_s:.0f} s into the outage")

    client, run_id = train_through(outage, team_stack, team_writer, tmp_path, seed=11)
    model = Path(client.download_artifacts(run_id, "checkpoint/model.pt", str(tmp_path / "download")))
    assert model.read_bytes() == (tmp_path / "model" / "model.pt").read_bytes()


def test_postgres_restarting_mid_training_loses_nothing(team_stack, team_writer, tmp_path: Path):
    def restart(process: subprocess.Popen, folder: Path) -> None:
        team_stack.stop_service("postgres")
        time.sleep(10)
        team_stack.start_service("postgres")
        assert process.poll() is None  # still training

    train_through(restart, team_stack, team_writer, tmp_path, seed=12)


def test_stages_started_while_the_server_is_down_run_and_their_records_follow(team_stack, team_writer, tmp_path: Path):
    """The whole pipeline runs during an outage: every stage warns, finishes and exits 0; its
    records (the training run, and evaluation runs nested under that run's pending id) wait in the
    journal, and `ddpmlab tracking sync` sends them once the server is back."""
    stack = team_stack
    params = write_tiny_params(tmp_path / "params.yaml", train={"seed": 13}, evaluate={"snapshot_samples": 0})
    env = client_env(stack, team_writer, tmp_path, wait_s=2)
    prepare_inputs(params, tmp_path)
    stack.stop_service("mlflow")
    try:
        for name, args in [
            ("train", train_args(params, tmp_path, tmp_path)),
            ("sample", ["--params", params, "--model", tmp_path / "model", "--out", tmp_path / "samples"]),
            ("evaluate", evaluate_args(params, tmp_path / "data", tmp_path / "samples", tmp_path / "model", tmp_path, tmp_path)),
            ("report", report_args(tmp_path, tmp_path)),
        ]:
            done = run_stage(name, args, env, tmp_path / f"{name}.out")
            assert done.returncode == 0, done.stdout
            assert "is not reachable" in done.stdout and "Traceback" not in done.stdout, done.stdout
    finally:
        stack.start_service("mlflow")
    assert (tmp_path / "reports" / "report.md").exists()
    assert sync(env)
    client = MlflowClient(stack.tracking_uri)
    run_id = train_run(client, 13)
    assert_history_matches_log(client, run_id, tmp_path / "train_log.csv")
    exp = client.get_experiment_by_name("ddpmlab").experiment_id
    evaluations = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}'")
    with open(tmp_path / "steps.csv") as f:
        steps = {row["key"]: float(row["fid"]) for row in csv.DictReader(f)}
    assert {r.data.params["run_key"]: r.data.metrics["fid"] for r in evaluations} == pytest.approx(steps)
    assert all(r.data.params["train_run_id"] == run_id for r in evaluations)  # the pending id was replaced
    listed = {a.path for folder in ("checkpoint", "report") for a in client.list_artifacts(run_id, folder)}
    assert {"checkpoint/model.pt", "report/report.md"} <= listed
    assert not list((tmp_path / "journal").glob("*.jsonl"))


def test_the_object_store_down_fails_the_stage_clearly_and_a_sync_logs_the_artifacts(team_stack, team_writer, tmp_path: Path):
    stack = team_stack
    params = write_tiny_params(tmp_path / "params.yaml", train={"seed": 14}, evaluate={"snapshot_samples": 0})
    env = client_env(stack, team_writer, tmp_path, wait_s=60)
    prepare_inputs(params, tmp_path)
    assert run_stage("train", train_args(params, tmp_path, tmp_path), env, tmp_path / "train.out").returncode == 0
    stack.stop_service("object_store")
    try:
        done = run_stage("sample", ["--params", params, "--model", tmp_path / "model", "--out", tmp_path / "samples"], env, tmp_path / "sample.out")
        assert done.returncode == 1, done.stdout
        assert "answered with errors" in done.stdout and "local outputs are complete and untouched" in done.stdout, done.stdout
        assert "Traceback" not in done.stdout
        comparison = (tmp_path / "samples" / "comparison.png").read_bytes()
        assert comparison and (tmp_path / "samples" / "sampling.json").exists()  # the stage's outputs are all there
    finally:
        stack.start_service("object_store")
    sync(env)
    client = MlflowClient(stack.tracking_uri)
    run_id = train_run(client, 14)
    logged = Path(client.download_artifacts(run_id, "samples/comparison.png", str(tmp_path / "download")))
    assert logged.read_bytes() == comparison


# -- the access probe: wrong credentials are not an outage -----------------------------------


@pytest.mark.parametrize(
    "user,password,status,message",
    [
        (None, None, 401, "refused the credentials of no user (MLFLOW_TRACKING_USERNAME is not set) (HTTP 401)"),
        ("worker", "not-the-password", 401, "refused the credentials of user 'worker' (HTTP 401)"),
        ("reader", "reader-password-1234", 403, "user 'reader' may not log to experiment 'ddpmlab' (HTTP 403)"),
    ],
)
def test_a_stage_with_bad_credentials_fails_at_once_naming_the_server(team_stack, team_writer, tmp_path: Path, user, password, status, message):
    """Unlike an outage, waiting never fixes a 401 or 403: the stage fails before any work."""
    from conftest import TEAM_ADMIN_PASSWORD
    from ddpmlab.team import accounts

    accounts.create_user(team_stack.tracking_uri, TEAM_ADMIN_PASSWORD, "reader", "reader-password-1234")  # READ: the default
    params = write_tiny_params(tmp_path / "params.yaml")
    env = client_env(team_stack, team_writer, tmp_path, wait_s=5)
    env = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password} if user else {}
    (tmp_path / "model").mkdir()
    start = time.monotonic()
    done = run_stage("sample", ["--params", params, "--model", tmp_path / "model", "--out", tmp_path / "samples"], env, tmp_path / "sample.out")
    assert done.returncode == 1 and time.monotonic() - start < 60, done.stdout
    assert f"Error: MLflow tracking server {team_stack.tracking_uri}" in done.stdout and message in done.stdout, done.stdout
    assert "no checkpoint" not in done.stdout and not (tmp_path / "samples").exists()  # refused before reading its inputs
    if status == 403:
        assert "ddpmlab team user reader --permission edit --experiment ddpmlab" in done.stdout


def test_compare_without_credentials_fails_at_once_naming_the_server(team_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from ddpmlab.cli import main as ddpmlab_command

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_stack.tracking_uri)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    result = CliRunner().invoke(ddpmlab_command, ["compare", "--params", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "reports")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"Error: MLflow tracking server {team_stack.tracking_uri} refused the credentials" in result.output and "(HTTP 401)" in result.output
