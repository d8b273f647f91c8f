"""`ddpmlab team` for real: PostgreSQL, SeaweedFS and `mlflow server --app-name basic-auth` as
processes on free loopback ports, their state in a temporary folder (one stack for the module,
destroyed at its end). Checked as a team's client sees them: logins and permissions, artifacts in
the bucket, a DVC remote, every listener on 127.0.0.1, services stopped and started again, the
admin's password nowhere but its 0600 ini, and nothing left running after down()."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import free_port, needs_postgresql
from ddpmlab.cli import main as ddpmlab_command
from ddpmlab.team.processes import TeamStackError, alive
from ddpmlab.team.stack import TeamStack

ADMIN_PASSWORD = f"admin-{secrets.token_hex(10)}"  # unique: searched for in files, command lines and environments
pytestmark = needs_postgresql
UP_TIMEOUT_S = 180  # `mlflow server` answers after ~20 s on 2 busy cores
EXPERIMENT = "ddpmlab"
S3_CONFIG = Config(
    request_checksum_calculation="when_required", response_checksum_validation="when_required", retries={"max_attempts": 1}
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamStack]:
    team = TeamStack(tmp_path_factory.mktemp("team") / "state", mlflow_port=free_port())
    try:
        assert team.up(ADMIN_PASSWORD, experiments=(EXPERIMENT,), timeout_s=UP_TIMEOUT_S) is True
        yield team
    finally:
        team.destroy()  # down(), then the state folder and the PostgreSQL cluster


@contextmanager
def login(user: str | None, password: str | None = None) -> Iterator[None]:
    """MLflow's client credentials (read per request from the environment) for the block; None: anonymous."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        for key, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        yield


def as_admin():
    return login("admin", ADMIN_PASSWORD)


def team_cli(*args: object, env: dict[str, str] | None = None, input: str | None = None, exit_code: int = 0):
    result = CliRunner().invoke(ddpmlab_command, ["team", *map(str, args)], env=env, input=input, catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return result


def s3(stack: TeamStack, signed: bool = True):
    """A boto3 client of the stack's S3 API, with its key or anonymous."""
    if not signed:
        return boto3.client(
            "s3",
            endpoint_url=stack.s3_endpoint,
            region_name="us-east-1",
            config=S3_CONFIG.merge(Config(signature_version=UNSIGNED)),
        )
    access, secret = stack.s3_credentials
    key = {"aws_access_key_id": access, "aws_secret_access_key": secret}
    return boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1", config=S3_CONFIG, **key)


def bucket_keys(stack: TeamStack, name: str) -> list[str]:
    pages = s3(stack).get_paginator("list_objects_v2").paginate(Bucket=stack.bucket(name))
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def listeners() -> list[tuple[str, set[int]]]:
    """Every listening TCP socket of this machine: (local address, pids holding it)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [(line.split()[3], {int(p) for p in re.findall(r"pid=(\d+)", line)}) for line in out.splitlines() if line.strip()]


def stack_pids(stack: TeamStack) -> set[int]:
    return {pid for pids in stack.pids().values() for pid in pids}


def log_a_run(stack: TeamStack, tmp_path: Path, name: str) -> str:
    """As the admin: a run with a metric and an artifact, read back; returns the run id."""
    with as_admin():
        client = MlflowClient(stack.tracking_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        run_id = client.create_run(experiment.experiment_id, run_name=name).info.run_id
        client.log_metric(run_id, "loss", 0.5, step=1)
        artifact = tmp_path / f"{name}.txt"
        artifact.write_text(f"artifact of {name}\n")
        client.log_artifact(run_id, str(artifact), "notes")
        client.set_terminated(run_id)
        assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5]
        back = client.download_artifacts(run_id, f"notes/{name}.txt", str(tmp_path / "back"))
        assert Path(back).read_text() == f"artifact of {name}\n"
    return run_id


def test_up_starts_every_service_and_another_process_sees_them(stack: TeamStack):
    assert all(info["running"] and info["pid"] for info in stack.status().values()), stack.status()
    assert stack.up(ADMIN_PASSWORD) is False  # running already: nothing to do
    command = [sys.executable, "-m", "ddpmlab.cli", "team", "status", "--json", "--dir", stack.state_dir]
    status = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # another process
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert seen["mlflow"]["url"] == stack.tracking_uri and seen["object_store"]["url"] == stack.s3_endpoint
    assert {name: info["pid"] for name, info in seen.items()} == {name: info["pid"] for name, info in stack.status().items()}


def test_every_listening_socket_of_the_stack_is_on_loopback(stack: TeamStack):
    pids = stack_pids(stack)
    ours = [address for address, holders in listeners() if holders & pids]
    assert ours and all(address.startswith("127.0.0.1:") for address in ours), ours
    ports = {int(address.rsplit(":", 1)[1]) for address in ours}
    status = stack.status()
    assert {status[name]["port"] for name in status} <= ports


def test_health_answers_and_anonymous_writes_are_refused(stack: TeamStack):
    with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=10) as response:
        assert response.status == 200
    with login(None):
        client = MlflowClient(stack.tracking_uri)
        with pytest.raises(MlflowException) as refused:
            client.create_experiment("anonymous")
        assert refused.value.get_http_status_code() == 401
        with pytest.raises(MlflowException) as refused:
            client.search_experiments()
        assert refused.value.get_http_status_code() == 401
    with pytest.raises(ClientError, match="AccessDenied"):
        s3(stack, signed=False).list_objects_v2(Bucket=stack.bucket("dvc"))
    with pytest.raises(ClientError, match="AccessDenied"):
        s3(stack, signed=False).put_object(Bucket=stack.bucket("dvc"), Key="anonymous.txt", Body=b"x")


def test_the_admin_logs_a_run_whose_artifact_lands_in_the_bucket(stack: TeamStack, tmp_path: Path):
    with as_admin():
        experiment = MlflowClient(stack.tracking_uri).get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run_id = log_a_run(stack, tmp_path, "admin-run")
    assert any(key.endswith(f"{run_id}/artifacts/notes/admin-run.txt") for key in bucket_keys(stack, "mlflow-artifacts"))


def test_a_read_user_searches_but_cannot_log_and_an_edit_user_logs(stack: TeamStack):
    admin_env = {"DDPMLAB_TEAM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    reader, writer, manager = ("reader-password-1", "writer-password-1", "manager-password-1")
    out = team_cli(
        "user", "reader", "--permission", "read", "--dir", stack.state_dir, env=admin_env | {"DDPMLAB_TEAM_USER_PASSWORD": reader}
    ).output
    assert "created: READ on ddpmlab" in out and reader not in out and ADMIN_PASSWORD not in out
    team_cli(
        "user", "writer", "--permission", "edit", "--dir", stack.state_dir, env=admin_env | {"DDPMLAB_TEAM_USER_PASSWORD": writer}
    )
    # No password in the environment: a hidden prompt, asked twice.
    no_password = admin_env | {"DDPMLAB_TEAM_USER_PASSWORD": ""}
    out = team_cli(
        "user", "manager", "--permission", "MANAGE", "--dir", stack.state_dir, env=no_password, input=f"{manager}\n{manager}\n"
    ).output
    assert "created: MANAGE" in out and manager not in out
    # Again for an existing user: the permission changes, the password stays.
    assert (
        "exists (password unchanged): READ"
        in team_cli("user", "manager", "--permission", "read", "--dir", stack.state_dir, env=admin_env).output
    )
    assert (
        "not one of"
        in team_cli("user", "x", "--permission", "owner", "--dir", stack.state_dir, env=admin_env, exit_code=2).output
    )

    with as_admin():
        admin = MlflowClient(stack.tracking_uri)
        experiment_id = admin.get_experiment_by_name(EXPERIMENT).experiment_id
        run_id = admin.create_run(experiment_id, run_name="shared").info.run_id
    with login("reader", reader):
        client = MlflowClient(stack.tracking_uri)
        assert run_id in {r.info.run_id for r in client.search_runs([experiment_id])}
        with pytest.raises(MlflowException) as refused:
            client.log_metric(run_id, "loss", 1.0)
        assert refused.value.get_http_status_code() == 403
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        with pytest.raises(MlflowException) as refused:  # the experiment's registered model (made by `up`): READ too
            client.create_model_version(EXPERIMENT, source, run_id=run_id)
        assert refused.value.get_http_status_code() == 403
    with login("writer", writer):
        client = MlflowClient(stack.tracking_uri)
        client.log_metric(run_id, "loss", 2.0)
        own = client.create_run(experiment_id, run_name="writer's").info.run_id
        client.log_metric(own, "loss", 3.0)
        assert client.create_model_version(EXPERIMENT, source, run_id=run_id).run_id == run_id
    with login("manager", manager):
        with pytest.raises(MlflowException) as refused:  # demoted to READ above
            MlflowClient(stack.tracking_uri).log_metric(run_id, "loss", 4.0)
        assert refused.value.get_http_status_code() == 403
    with login("reader", "not-the-password"), pytest.raises(MlflowException) as refused:
        MlflowClient(stack.tracking_uri).search_runs([experiment_id])
    assert refused.value.get_http_status_code() == 401


def test_dvc_remote_points_a_repository_at_the_dvc_bucket(stack: TeamStack, tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))} | {"DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q"], [*dvc, "init", "-q"]):
        subprocess.run(command, cwd=repo, env=env, check=True, timeout=60)
    team_cli("dvc-remote", "--dir", stack.state_dir, "--repo", repo, "--path", "test-project")
    _, secret = stack.s3_credentials
    assert secret not in (repo / ".dvc" / "config").read_text() and secret in (repo / ".dvc" / "config.local").read_text()
    assert "s3://dvc/test-project" in (repo / ".dvc" / "config").read_text()
    (repo / "data.txt").write_text("tracked by dvc\n")
    for command in ([*dvc, "add", "-q", "data.txt"], [*dvc, "push", "-q"]):
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert any(key.startswith("test-project/files/md5/") for key in bucket_keys(stack, "dvc"))


@pytest.mark.parametrize("password", [None, "", "password1234", "short-pw-11"])
def test_a_weak_or_missing_admin_password_is_refused_before_anything_starts(tmp_path: Path, password: str | None):
    folder = tmp_path / "never"
    with pytest.raises(ValueError, match="admin password"):
        TeamStack(folder, mlflow_port=free_port()).up(password)
    assert not folder.exists()
    result = team_cli("up", "--dir", folder, env={"DDPMLAB_TEAM_ADMIN_PASSWORD": password}, exit_code=1)
    assert ("DDPMLAB_TEAM_ADMIN_PASSWORD is not set" if not password else "admin password") in result.output
    assert not folder.exists()


def test_the_admin_password_is_only_in_the_private_ini(stack: TeamStack):
    ini = stack.state_dir / "mlflow-auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600 and ADMIN_PASSWORD in ini.read_text()
    holders = [p for p in stack.state_dir.rglob("*") if p.is_file() and ADMIN_PASSWORD.encode() in p.read_bytes()]
    assert holders == [ini]
    for name in ("secrets.json", "pgpass", "s3-identities.json", "state.json"):
        assert stat.S_IMODE((stack.state_dir / name).stat().st_mode) == 0o600, name
    for pid in stack_pids(stack):
        for what in ("cmdline", "environ"):
            assert ADMIN_PASSWORD.encode() not in Path(f"/proc/{pid}/{what}").read_bytes(), (pid, what)
    postgres_password = json.loads((stack.state_dir / "secrets.json").read_text())["postgres_password"]
    for pid in stack_pids(stack):
        assert postgres_password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid


@pytest.mark.parametrize("service", ["postgres", "object_store", "mlflow"])
def test_a_service_stops_and_starts_again_and_the_server_answers(stack: TeamStack, service: str, tmp_path: Path):
    before = stack.pids()[service]
    stack.stop_service(service)
    assert not stack.status()[service]["running"] and not any(alive(pid) for pid in before)
    others = [name for name in stack.status() if name != service]
    assert all(stack.status()[name]["running"] for name in others)
    status = team_cli("status", "--dir", stack.state_dir, exit_code=3).output  # 3: something is stopped
    assert re.search(rf"{service}\s+stopped", status)
    team_cli("start", "--service", service, "--dir", stack.state_dir)
    assert all(info["running"] for info in stack.status().values())
    run_id = log_a_run(stack, tmp_path, f"after-{service}")  # PostgreSQL, S3 and MLflow all serve again
    assert any(key.endswith(f"{run_id}/artifacts/notes/after-{service}.txt") for key in bucket_keys(stack, "mlflow-artifacts"))


def test_another_admin_password_is_refused_and_up_stops_what_it_started(stack: TeamStack):
    stack.stop_service("mlflow")
    other = f"other-{secrets.token_hex(8)}"
    with pytest.raises(TeamStackError, match="refused the 'admin' login"):
        stack.up(other)  # starts MLflow (the only service down), whose admin has the first password
    assert [name for name, info in stack.status().items() if not info["running"]] == ["mlflow"]
    ini = (stack.state_dir / "mlflow-auth.ini").read_text()
    assert ADMIN_PASSWORD in ini and other not in ini
    assert not any(other.encode() in p.read_bytes() for p in stack.logs.glob("*.log"))
    assert stack.up(ADMIN_PASSWORD) is True
    assert all(info["running"] for info in stack.status().values())


def test_a_service_that_fails_to_start_is_stopped_and_reported_with_its_log(stack: TeamStack):
    ini = stack.state_dir / "mlflow-auth.ini"
    good = ini.read_text()
    stack.stop_service("mlflow")
    try:
        ini.write_text(good.replace("admin_username = admin", "admin_username ="))  # MLflow refuses to start without one
        with pytest.raises(TeamStackError, match="MLflow server exited while starting") as failure:
            stack.start_service("mlflow", timeout_s=UP_TIMEOUT_S)
        message = str(failure.value)
        assert f"the end of {stack.logs / 'mlflow.log'}" in message and "needs a username for the admin user" in message
        assert not stack.status()["mlflow"]["running"] and stack.pids()["mlflow"] == []
    finally:
        ini.write_text(good)
    stack.start_service("mlflow", timeout_s=UP_TIMEOUT_S)


def test_down_leaves_no_process_of_the_stack(stack: TeamStack):
    pids = stack_pids(stack)
    ports = {info["port"] for info in stack.status().values()}
    assert len(pids) >= 3
    team_cli("down", "--dir", stack.state_dir)
    assert not any(alive(pid) for pid in pids)
    assert not any(info["running"] for info in stack.status().values())
    assert stack_pids(stack) == set()
    assert not {int(address.rsplit(":", 1)[1]) for address, _ in listeners()} & ports
