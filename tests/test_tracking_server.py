"""MLflow tracking servers: an unreachable MLFLOW_TRACKING_URI fails a stage at once with what
to do (MLflow's client would retry it for minutes), and a real `mlflow server` on a loopback
port receives a tiny pipeline's runs, params, metrics and artifacts."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from stages import evaluate, sample

from conftest import (
    ROOT,
    evaluate_args,
    free_port,
    isolate_stores,
    prepare_inputs,
    run_pipeline,
    stop_process_group,
    train_args,
    write_tiny_params,
)
from ddpmlab.cli import main as ddpmlab_command
from ddpmlab.pipeline import tracking
from ddpmlab.pipeline.tracking import TrackingUnavailable

SERVER_START_S = 60  # `mlflow server` answers after ~20 s on 2 busy CPU cores


@pytest.fixture
def dead_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """MLFLOW_TRACKING_URI at a loopback port where nothing listens (connections are refused)."""
    return isolate_stores(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")


def test_an_unreachable_server_fails_at_once_saying_what_to_do(dead_server: str):
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as failure:
        tracking.require_reachable()
    assert time.monotonic() - start < 5
    message = str(failure.value)
    assert f"MLflow tracking server {dead_server} is not reachable" in message and "Connection refused" in message
    assert "`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`" in message
    assert "unset MLFLOW_TRACKING_URI to use the project's local store (sqlite:///" in message
    with pytest.raises(TrackingUnavailable):
        tracking.use_experiment("ddpmlab")  # every run start checks


def test_a_server_that_accepts_but_never_answers_times_out():
    with socket.socket() as listener:  # the kernel completes the handshake; nobody ever reads
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="timed out"):
            tracking.require_reachable(uri, timeout_s=0.5)
        assert time.monotonic() - start < 3


class _Status(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status in the server's ``status`` attribute."""

    def do_GET(self) -> None:
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status,reachable", [(200, True), (401, True), (404, True), (502, False), (503, False)])
def test_any_answer_below_500_counts_as_reachable(status: int, reachable: bool):
    """A proxy or authentication layer may hide /health; a 5xx means nothing usable is behind it."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    server.status = status
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}/"
        if reachable:
            tracking.require_reachable(uri)
        else:
            with pytest.raises(TrackingUnavailable, match=f"HTTP {status}"):
                tracking.require_reachable(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_other_stores_are_not_checked(tmp_path: Path):
    for uri in (f"sqlite:///{tmp_path / 'none.db'}", f"file://{tmp_path / 'mlruns'}", "databricks"):
        tracking.require_reachable(uri)


@pytest.mark.parametrize("stage", ["sample", "evaluate"])
def test_a_stage_started_while_the_server_is_down_warns_and_goes_on(dead_server: str, tmp_path: Path, stage: str):
    """A job that starts during an outage is not lost: it warns at once and does its work (here it
    reaches its inputs, which are empty, and fails on those); tests/test_team_faults.py runs one
    whole and finds its records on the server afterwards."""
    params = write_tiny_params(tmp_path / "params.yaml")
    for folder in ("data", "samples", "model"):
        (tmp_path / folder).mkdir()
    for name in ("classifier.pt", "classifier.json"):
        (tmp_path / name).touch()
    args = {
        "sample": (sample, ["--params", params, "--model", tmp_path / "model", "--out", tmp_path / "out"]),
        "evaluate": (evaluate, evaluate_args(params, tmp_path / "data", tmp_path / "samples", tmp_path / "model", tmp_path, tmp_path / "out")),
    }
    module, stage_args = args[stage]
    start = time.monotonic()
    result = CliRunner().invoke(module.main, [str(a) for a in stage_args])
    assert time.monotonic() - start < 15
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
    assert f"warning: MLflow tracking server {dead_server} is not reachable" in result.output and "Traceback" not in result.output
    assert "Going on: what this stage logs is kept in" in result.output
    missing = {"sample": "no checkpoint at", "evaluate": "sampling.json"}[stage]
    assert "Error: " in result.output and missing in result.output.split("Error: ")[1]  # it went on to its inputs


def test_compare_fails_at_once_when_the_server_is_down(dead_server: str, tmp_path: Path):
    result = CliRunner().invoke(ddpmlab_command, ["compare", "--params", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "reports")])
    assert result.exit_code == 1 and f"Error: MLflow tracking server {dead_server} is not reachable" in result.output


# -- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`mlflow server` on a free loopback port with its own SQLite store and proxied artifacts;
    yields (URI, process, folder) as soon as it is started (not yet answering). Job execution is
    off: its seven huey workers would compete for the two cores and nothing here uses them."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "server-artifacts"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", process, folder
    finally:
        stop_process_group(process)


def wait_until_answering(uri: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with status {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            tracking.require_reachable(uri, timeout_s=2)
            return
        except TrackingUnavailable:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {uri}/health within {SERVER_START_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def served_pipeline(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The tiny pipeline tracked by the server; prepare and classifier (no MLflow) run while it
    starts. Returns (server URI, pipeline folder)."""
    uri, process, server_folder = mlflow_server
    out = tmp_path_factory.mktemp("served-pipeline")
    params = write_tiny_params(out / "params.yaml", evaluate={"snapshot_samples": 0})
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_stores(monkeypatch, out, uri)
        prepare_inputs(params, out)
        wait_until_answering(uri, process, server_folder / "server.log")
        run_pipeline(params, out, data=out)
    return uri, out


def test_the_server_holds_the_runs_params_and_metrics(served_pipeline: tuple[str, Path]):
    uri, out = served_pipeline
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ddpmlab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (train_run,) = [r for r in runs if r.data.tags["ddpmlab.stage"] == "train"]
    evaluations = {r.data.params["run_key"]: r for r in runs if r.data.tags["ddpmlab.stage"] == "evaluate"}
    assert train_run.data.params["schedule"] == "linear" and train_run.data.params["T"] == "30" and train_run.data.params["train.lr"] == "0.001"
    assert [(m.step, np.isfinite(m.value)) for m in client.get_metric_history(train_run.info.run_id, "loss")] == [(2, True), (4, True)]
    assert set(evaluations) == {"ddpm-30", "ddpm-5", "dpmpp_2m-30", "dpmpp_2m-5"}
    for key, run in evaluations.items():
        sampler, steps = key.split("-")
        assert run.data.tags["mlflow.parentRunId"] == train_run.info.run_id and run.data.tags["mlflow.runName"] == f"linear-T30-seed0-{key}"
        assert run.data.params["sampler"] == sampler and run.data.params["sample_steps"] == steps and run.data.params["spacing"] == "uniform"
        assert run.data.params["nfe"] == steps and run.data.metrics["nfe"] == int(steps) and run.data.params["num_generated"] == "24"
        assert "guidance" not in run.data.params  # unconditional
        assert run.data.params["train_run_id"] == train_run.info.run_id and run.data.params["sampling_device"] == "cpu"
        assert np.isfinite(run.data.metrics["fid"]) and np.isfinite(run.data.metrics["nll_bits_per_dim"])
    assert evaluations["ddpm-30"].data.params["sampler.variance"] == "fixed_large"  # the sampler's options, prefixed
    assert not [p for p in evaluations["dpmpp_2m-30"].data.params if p.startswith("sampler.")]  # dpmpp_2m has none
    assert train_run.data.metrics["fid"] == evaluations["ddpm-30"].data.metrics["fid"]  # the headline run's
    assert not (out / "mlflow.db").exists()  # nothing went to a local store


def test_artifacts_go_through_the_server_and_come_back(served_pipeline: tuple[str, Path], mlflow_server, tmp_path: Path):
    uri, out = served_pipeline
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddpmlab").experiment_id])
    (train_run,) = [r.info.run_id for r in runs if r.data.tags["ddpmlab.stage"] == "train"]
    eval_run = next(r.info.run_id for r in runs if r.data.params.get("run_key") == "ddpm-30")
    assert train_run and eval_run
    listed = {a.path for folder in ("checkpoint", "samples", "evaluation", "report") for a in client.list_artifacts(train_run, folder)}
    assert {"checkpoint/model.pt", "checkpoint/train.json", "samples/comparison.png", "evaluation/steps.csv", "evaluation/fid_vs_nfe.csv", "report/report.html"} <= listed
    assert client.get_run(train_run).info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not a client-side path
    model = Path(client.download_artifacts(train_run, "checkpoint/model.pt", str(tmp_path)))
    assert model.read_bytes() == (out / "model" / "model.pt").read_bytes()
    grid = Path(client.download_artifacts(eval_run, "samples/grid.png", str(tmp_path)))
    assert grid.read_bytes() == (out / "samples" / "ddpm-30" / "grid.png").read_bytes()
    _, _, server_folder = mlflow_server
    assert list((server_folder / "server-artifacts").rglob("model.pt"))  # stored where the server keeps artifacts


def test_the_credentials_probe_takes_no_answer_as_nothing_to_refuse():
    """A server that stops answering between the health probe and the sign-in check is an outage
    (the journal handles it), not a refusal and not a traceback."""
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        start = time.monotonic()
        tracking.check_credentials(f"http://127.0.0.1:{listener.getsockname()[1]}", "ddpmlab")
        assert time.monotonic() - start < 15
    tracking.check_credentials(f"http://127.0.0.1:{free_port()}", "ddpmlab")  # connection refused


def test_a_full_disk_under_the_journal_stops_training_in_one_line_and_the_rerun_resumes_from_its_checkpoint(dead_server: str, tmp_path: Path):
    """The journal's disk fills mid-training (the server is down, so every record waits there): the
    stage stops with one line naming the journal, its last checkpoint is intact, and once there is
    space again the same command resumes from it and finishes."""
    from ddpmlab.training.resume import latest_checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        params = write_tiny_params(tmp_path / "params.yaml", train={"steps": 120, "log_every": 1, "checkpoint_every": 20})
        prepare_inputs(params, tmp_path)
        env = os.environ | {"DDPMLAB_JOURNAL_DIR": str(disk / "journal"), "DDPMLAB_TRACKING_WAIT_S": "1"}
        command = [sys.executable, "stages/train.py", *map(str, train_args(params, tmp_path, tmp_path))]
        stage = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not list((tmp_path / "resume").glob("*/step-*.pt")) and stage.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(disk / "ballast", "wb") as ballast:  # fill the journal's disk to the last byte
            try:
                while True:
                    ballast.write(bytes(1 << 16))
                    ballast.flush()
            except OSError:
                pass
        output = stage.communicate(timeout=300)[0]
        assert stage.returncode == 1, output[-3000:]
        assert "cannot write the tracking journal" in output and "No space left on device" in output, output[-3000:]
        assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
        (folder,) = {path.parent for path in (tmp_path / "resume").glob("*/step-*.pt")}
        saved, _ = latest_checkpoint(folder, lambda message: pytest.fail(message))  # every checkpoint loads
        assert saved is not None and saved["step"] >= 20
        (disk / "ballast").unlink()
        again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert f"resuming training from step {saved['step']}" in again.stdout + again.stderr
        assert (tmp_path / "model" / "model.pt").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_records_the_server_refused_are_listed_and_sync_retry_rejected_sends_them_once_fixed(served_pipeline, tmp_path: Path):
    """A run created into an experiment a person deleted is refused (400) and set aside with its
    records; `ddpmlab tracking status` lists them with the answer; after the experiment is restored,
    `ddpmlab tracking sync --retry-rejected` sends them, and the journal is empty. The journal is
    written under another spelling of the server's URI (a trailing slash), and still found."""
    from ddpmlab.pipeline.journal import Journal, new_pending_id

    uri, _ = served_pipeline
    client = MlflowClient(uri)
    closed = client.create_experiment(f"closed-{tmp_path.name}")
    client.delete_experiment(closed)
    folder, run = tmp_path / "journal", new_pending_id()
    journal = Journal.create(folder, uri + "/")
    journal.append({"op": "create", "run": run, "experiment": f"closed-{tmp_path.name}", "name": "r", "tags": {}, "time": 1_000})
    journal.append({"op": "log", "run": run, "metrics": [["loss", 0.5, 2_000, 1]], "params": {"lr": "0.1"}})
    journal.close()
    env = {"MLFLOW_TRACKING_URI": uri, "DDPMLAB_JOURNAL_DIR": str(folder)}
    refused = CliRunner().invoke(ddpmlab_command, ["tracking", "sync", "--wait", "30"], env=env)
    assert refused.exit_code == 1 and "refused 2 record(s), set aside again" in refused.output, refused.output
    status = CliRunner().invoke(ddpmlab_command, ["tracking", "status"], env=env).output
    assert "2 record(s) refused by the server and set aside" in status and "create (run " + run in status, status
    client.restore_experiment(closed)
    sent = CliRunner().invoke(ddpmlab_command, ["tracking", "sync", "--retry-rejected", "--wait", "30"], env=env)
    assert sent.exit_code == 0 and "2 of them set aside before" in sent.output, sent.output
    (got,) = client.search_runs([closed])
    assert got.data.params == {"lr": "0.1"} and [m.step for m in client.get_metric_history(got.info.run_id, "loss")] == [1]
    assert not list(folder.glob("*.rejected")) and not list(folder.glob("*.jsonl"))
