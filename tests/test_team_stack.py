"""`ddpmlab team` for real: PostgreSQL, SeaweedFS and `mlflow server --app-name basic-auth` as
processes on free loopback ports, their state in a temporary folder (one stack for the module,
destroyed at its end). Checked as a team's client sees them: logins and permissions, artifacts in
the bucket, a DVC remote, every listener on 127.0.0.1, services stopped and started again, the
admin's password nowhere but its 0600 ini, and nothing left running after down()."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.error
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
pytestmark = [needs_postgresql, pytest.mark.usefixtures("service_python")]
PUBLIC_NAME = "mlflow.example.test"
UP_TIMEOUT_S = 180  # `mlflow server` answers after ~20 s on 2 busy cores
EXPERIMENT = "ddpmlab"
S3_CONFIG = Config(
    request_checksum_calculation="when_required", response_checksum_validation="when_required", retries={"max_attempts": 1}
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, service_python) -> Iterator[TeamStack]:
    # As behind a reverse proxy that forwards Host: mlflow.example.test
    team = TeamStack(tmp_path_factory.mktemp("team") / "state", mlflow_port=free_port(), public_names=[PUBLIC_NAME])
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


def running(stack: TeamStack) -> None:
    """The module's stack up again (test_down_leaves_no_process_of_the_stack stops it; tests after it start it)."""
    stack.up(ADMIN_PASSWORD, experiments=(EXPERIMENT,), timeout_s=UP_TIMEOUT_S)


def as_admin():
    return login("admin", ADMIN_PASSWORD)


def team_cli(*args: object, env: dict[str, str] | None = None, input: str | None = None, exit_code: int = 0):
    result = CliRunner().invoke(ddpmlab_command, ["team", *map(str, args)], env=env, input=input, catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return result


def s3(stack: TeamStack, signed: bool = True, key: tuple[str, str] | None = None):
    """A boto3 client of the stack's S3 API, with ``key`` (default: the stack's own) or anonymous."""
    if not signed:
        return boto3.client(
            "s3",
            endpoint_url=stack.s3_endpoint,
            region_name="us-east-1",
            config=S3_CONFIG.merge(Config(signature_version=UNSIGNED)),
        )
    access, secret = key or stack.s3_admin_key
    signing = {"aws_access_key_id": access, "aws_secret_access_key": secret}
    return boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1", config=S3_CONFIG, **signing)


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


def dvc_repo(folder: Path) -> tuple[Path, dict[str, str]]:
    """A new git + DVC repository and the environment to run dvc in (none of the caller's AWS or DVC settings)."""
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))} | {"DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=folder, env=env, check=True, timeout=60)
    return folder, env


def dvc(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False)


def key_in(path: Path) -> tuple[str, str]:
    from ddpmlab.team.credentials import load

    key = load(path)
    return key.access_key, key.secret_key


def test_dvc_remote_takes_a_persons_key_file_even_with_a_secret_that_looks_like_an_option(stack: TeamStack, tmp_path: Path):
    """About one generated secret in 64 began with '-', and `dvc remote modify` took it for an option."""
    secret = "-Lp-" + secrets.token_urlsafe(24)
    key_file = stack.issue_dvc_key("dash", write=True, path=tmp_path / "dash.s3-credentials", secret=secret)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_in(key_file)[1] == secret
    repo, env = dvc_repo(tmp_path / "repo")
    team_cli("dvc-remote", "--credentials", key_file, "--repo", repo, "--path", "test-project")
    for name in ("config", "config.local"):
        assert secret not in (repo / ".dvc" / name).read_text(), name  # DVC reads the key from the file itself
    assert stat.S_IMODE((repo / ".dvc" / "config.local").stat().st_mode) == 0o600
    assert "s3://dvc/test-project" in (repo / ".dvc" / "config").read_text()
    (repo / "data.txt").write_text("tracked by dvc\n")
    for args in (["add", "-q", "data.txt"], ["push", "-q"]):
        done = dvc(repo, env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert any(key.startswith("test-project/files/md5/") for key in bucket_keys(stack, "dvc"))


def test_dvc_remote_refuses_a_key_file_others_can_read_or_that_is_not_one(stack: TeamStack, tmp_path: Path):
    repo, _ = dvc_repo(tmp_path / "repo")
    key_file = stack.issue_dvc_key("open", write=False, path=tmp_path / "open.s3-credentials")
    key_file.chmod(0o644)
    result = team_cli("dvc-remote", "--credentials", key_file, "--repo", repo, exit_code=1)
    assert "readable by others (mode 0644): chmod 600" in result.output
    other = tmp_path / "other.ini"
    other.write_text("[default]\naws_access_key_id = x\n")
    other.chmod(0o600)
    assert "not a ddpmlab team credentials file" in team_cli("dvc-remote", "--credentials", other, "--repo", repo, exit_code=1).output
    assert not (repo / ".dvc" / "config.local").exists()


def refused(call, **kwargs) -> int:
    """The HTTP status of S3 call ``call(**kwargs)``, which must be refused (403: not allowed, or an unknown key)."""
    with pytest.raises(ClientError) as error:
        call(**kwargs)
    return error.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_each_key_reaches_its_own_bucket_and_nothing_else(stack: TeamStack, tmp_path: Path):
    run_id = log_a_run(stack, tmp_path, "scoped")
    artifact = next(k for k in bucket_keys(stack, "mlflow-artifacts") if k.endswith(f"{run_id}/artifacts/notes/scoped.txt"))
    writer = s3(stack, key=key_in(stack.issue_dvc_key("writer", write=True, path=tmp_path / "writer")))
    reader = s3(stack, key=key_in(stack.issue_dvc_key("reader", write=False, path=tmp_path / "reader")))
    mlflow = s3(stack, key=stack.s3_mlflow_key)
    writer.put_object(Bucket="dvc", Key="scoped/object", Body=b"dvc data")
    assert reader.get_object(Bucket="dvc", Key="scoped/object")["Body"].read() == b"dvc data"
    for person in (writer, reader):  # a DVC user cannot read, list, overwrite or delete MLflow's artifacts
        assert refused(person.get_object, Bucket="mlflow-artifacts", Key=artifact) == 403
        assert refused(person.list_objects_v2, Bucket="mlflow-artifacts") == 403
        assert refused(person.put_object, Bucket="mlflow-artifacts", Key=artifact, Body=b"x") == 403
        assert refused(person.delete_object, Bucket="mlflow-artifacts", Key=artifact) == 403
        assert refused(person.create_bucket, Bucket="another") == 403
    assert refused(reader.put_object, Bucket="dvc", Key="scoped/other", Body=b"x") == 403
    assert refused(reader.delete_object, Bucket="dvc", Key="scoped/object") == 403
    assert refused(mlflow.get_object, Bucket="dvc", Key="scoped/object") == 403  # and MLflow cannot touch DVC's
    assert refused(mlflow.put_object, Bucket="dvc", Key="scoped/other", Body=b"x") == 403
    assert mlflow.get_object(Bucket="mlflow-artifacts", Key=artifact)["Body"].read() == b"artifact of scoped\n"
    assert bucket_keys(stack, "mlflow-artifacts").count(artifact) == 1


def test_reissuing_a_key_retires_the_old_one_and_revoke_ends_login_and_key(stack: TeamStack, tmp_path: Path):
    first = key_in(stack.issue_dvc_key("leaver", write=True, path=tmp_path / "first"))
    second = key_in(stack.issue_dvc_key("leaver", write=True, path=tmp_path / "second"))
    assert first != second and refused(s3(stack, key=first).list_objects_v2, Bucket="dvc") == 403
    password = f"leaver-{secrets.token_hex(8)}"
    env = {"DDPMLAB_TEAM_ADMIN_PASSWORD": ADMIN_PASSWORD, "DDPMLAB_TEAM_USER_PASSWORD": password}
    made = team_cli("user", "leaver", "--permission", "edit", "--dir", stack.state_dir, env=env).output
    key_file = stack.credentials_file("leaver")
    assert f"write key to s3://dvc for 'leaver' in {key_file}" in made and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    third = key_in(key_file)
    s3(stack, key=third).list_objects_v2(Bucket="dvc")  # works
    assert refused(s3(stack, key=second).list_objects_v2, Bucket="dvc") == 403
    team_cli("revoke", "leaver", "--dir", stack.state_dir, env=env)
    assert refused(s3(stack, key=third).list_objects_v2, Bucket="dvc") == 403 and not key_file.exists()
    with login("leaver", password), pytest.raises(MlflowException) as gone:
        MlflowClient(stack.tracking_uri).search_experiments()
    assert gone.value.get_http_status_code() == 401


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
    ini = stack.auth_config
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600 and ADMIN_PASSWORD in ini.read_text()
    folders = {stack.state_dir, stack.service_dir}  # one folder, or as root two (the services' own)
    holders = [p for f in folders for p in f.rglob("*") if p.is_file() and ADMIN_PASSWORD.encode() in p.read_bytes()]
    assert holders == [ini]
    for path in (stack.state_dir / "secrets.json", stack.state_dir / "pgpass", stack.service_dir / "s3-identities.json",
                 stack.state_file):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
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
    ini = stack.auth_config.read_text()
    assert ADMIN_PASSWORD in ini and other not in ini
    assert not any(other.encode() in p.read_bytes() for p in stack.logs.glob("*.log"))
    assert stack.up(ADMIN_PASSWORD) is True
    assert all(info["running"] for info in stack.status().values())


def test_a_service_that_fails_to_start_is_stopped_and_reported_with_its_log(stack: TeamStack):
    ini = stack.auth_config
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


@contextmanager
def command_lines() -> Iterator[set[bytes]]:
    """Every process command line on this machine seen while the block runs (polled every ~5 ms):
    what `ps` would have shown any local user."""
    seen: set[bytes] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        seen.add((entry / "cmdline").read_bytes())
                    except OSError:  # gone meanwhile
                        pass
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def test_no_secret_on_a_command_line_in_a_childs_environment_or_in_a_file_others_can_read(tmp_path: Path):
    """`team up`, `team user` and `team dvc-remote` run as a lab's admin and a user run them: the CLI in
    subprocesses, the admin's password in its environment variable."""
    folder, admin, password = tmp_path / "state", f"admin-{secrets.token_hex(10)}", f"alice-{secrets.token_hex(10)}"
    env = os.environ | {"DDPMLAB_TEAM_ADMIN_PASSWORD": admin, "DDPMLAB_TEAM_USER_PASSWORD": password}
    repo, _ = dvc_repo(tmp_path / "repo")
    cli = [sys.executable, "-m", "ddpmlab.cli", "team"]
    commands = [
        ["up", "--dir", folder, "--port", free_port()],
        ["user", "alice", "--permission", "edit", "--dir", folder],
        ["dvc-remote", "--credentials", folder / "people" / "alice.s3-credentials", "--repo", repo],
    ]
    try:
        with command_lines() as lines:
            for args in commands:
                done = subprocess.run([*cli, *map(str, args)], env=env, capture_output=True, text=True, timeout=300, check=False)
                assert done.returncode == 0, done.stdout + done.stderr
        stack = TeamStack.load(folder)
        environments = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in stack_pids(stack)}
        held = [admin, password, key_in(stack.credentials_file("alice"))[1], *json.loads((folder / "secrets.json").read_text()).values()]
        files = [p for root in (folder, repo) for p in root.rglob("*") if p.is_file()]
        holders = {p: stat.S_IMODE(p.stat().st_mode) for p in files if any(s.encode() in p.read_bytes() for s in held)}
    finally:
        TeamStack.load(folder).destroy()
    assert any(b"s3.configure" not in line and b"shell" in line for line in lines)  # it saw `weed shell` run...
    assert any(b"remote\0modify" in line for line in lines)  # ... and `dvc remote modify`
    for secret in held:
        assert not [line for line in lines if secret.encode() in line], "a secret was on a command line"
    assert environments and not [pid for pid, environ in environments.items() if admin.encode() in environ]
    assert holders and not {p: f"{mode:04o}" for p, mode in holders.items() if mode & 0o077}


def test_mlflows_database_role_owns_its_databases_and_nothing_more(stack: TeamStack):
    """A hole in MLflow's use of its database must not become a shell: its role is no superuser, so
    COPY ... TO PROGRAM is refused; and MLflow's process can read only its own role's password."""
    import psycopg2

    running(stack)
    pg = stack._postgres()
    assert not pg.legacy
    superuser_password = json.loads((stack.state_dir / "secrets.json").read_text())["postgres_password"]
    assert superuser_password not in pg.service_passfile.read_text() and stat.S_IMODE(pg.service_passfile.stat().st_mode) == 0o600
    mlflow_pid = stack.status()["mlflow"]["pid"]
    assert f"PGPASSFILE={pg.service_passfile}".encode() in Path(f"/proc/{mlflow_pid}/environ").read_bytes().split(b"\0")
    conn = psycopg2.connect(host=pg.host, port=pg.port, dbname="mlflow", user="mlflow", passfile=str(pg.service_passfile), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False)
            cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname IN ('mlflow', 'mlflow_auth')")
            assert dict(cur.fetchall()) == {"mlflow": "mlflow", "mlflow_auth": "mlflow"}
            cur.execute("SELECT count(*) FROM runs")  # MLflow's own tables are its to use
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    finally:
        conn.close()


def test_mlflow_answers_only_the_host_names_it_serves(stack: TeamStack):
    """DNS rebinding: a page on attacker.example that resolves its name to 127.0.0.1 would reach the
    server with Host: attacker.example; MLflow refuses every Host header but the stack's own names
    and the public name a reverse proxy forwards (which MLflow's defaults would refuse)."""
    running(stack)
    port = stack.state["ports"]["mlflow"]

    def status(host: str) -> int:
        request = urllib.request.Request(f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert status(f"127.0.0.1:{port}") == 200 and status(f"localhost:{port}") == 200 and status(PUBLIC_NAME) == 200
    assert status(f"attacker.example:{port}") in (400, 403) and status("attacker.example") in (400, 403)


def test_backup_destroy_restore_brings_back_every_run_metric_artifact_login_key_and_dvc_object(tmp_path: Path):
    first = TeamStack(tmp_path / "first", mlflow_port=free_port())
    second = None
    try:
        assert first.up(ADMIN_PASSWORD, experiments=(EXPERIMENT,), timeout_s=UP_TIMEOUT_S)
        run_id = log_a_run(first, tmp_path, "kept")
        env = {"DDPMLAB_TEAM_ADMIN_PASSWORD": ADMIN_PASSWORD, "DDPMLAB_TEAM_USER_PASSWORD": "carol-password-1234"}
        team_cli("user", "carol", "--permission", "edit", "--dir", first.state_dir, "--dvc-credentials", tmp_path / "carol.key", env=env)
        repo, dvc_env = dvc_repo(tmp_path / "repo")
        team_cli("dvc-remote", "--credentials", tmp_path / "carol.key", "--repo", repo)
        (repo / "data.txt").write_text("pushed before the backup\n")
        for args in (["add", "-q", "data.txt"], ["push", "-q"]):
            assert dvc(repo, dvc_env, *args).returncode == 0
        before = {name: sorted(bucket_keys(first, name)) for name in ("mlflow-artifacts", "dvc")}
        team_cli("backup", "--to", tmp_path / "backup", "--dir", first.state_dir)
        assert stat.S_IMODE((tmp_path / "backup").stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (tmp_path / "backup").rglob("*") if p.is_file())
        first.destroy()

        second = TeamStack(tmp_path / "second", mlflow_port=free_port())
        assert second.up(ADMIN_PASSWORD, experiments=(EXPERIMENT,), timeout_s=UP_TIMEOUT_S)
        # The key file names the old store's address; the new stack serves the same keys on its own port.
        key = tmp_path / "carol.key"
        key.write_text(key.read_text().replace(first.s3_endpoint, second.s3_endpoint))
        team_cli("restore", "--from", tmp_path / "backup", "--dir", second.state_dir)
        assert {name: sorted(bucket_keys(second, name)) for name in ("mlflow-artifacts", "dvc")} == before
        with login("carol", "carol-password-1234"):  # her login and permission came back
            client = MlflowClient(second.tracking_uri)
            assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5]
            back = client.download_artifacts(run_id, "notes/kept.txt", str(tmp_path / "back"))
            assert Path(back).read_text() == "artifact of kept\n"
            client.log_metric(run_id, "after_restore", 1.0)
        team_cli("dvc-remote", "--credentials", key, "--repo", repo)  # her key works on the new store
        (repo / "data.txt").unlink()
        shutil.rmtree(repo / ".dvc" / "cache")
        assert dvc(repo, dvc_env, "pull", "-q").returncode == 0
        assert (repo / "data.txt").read_text() == "pushed before the backup\n"
    finally:
        for stack in (first, second):
            if stack is not None and stack.state_dir.exists():
                stack.destroy()


def test_start_upgrades_an_older_database_schema_before_mlflow_starts(stack: TeamStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """After an upgrade of MLflow the database is a schema behind, and `mlflow server` refuses to start
    on it; `team start` runs `mlflow db upgrade` first. The schema is put one revision back for real."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    running(stack)
    head = _get_latest_schema_revision()
    assert stack.schema_revision() == head
    stack.stop_service("mlflow")
    monkeypatch.setenv("PGPASSFILE", str(stack._postgres().service_passfile))
    command.downgrade(_get_alembic_config(stack._postgres().uri("mlflow")), "-1")
    assert stack.schema_revision() not in (None, head)
    team_cli("start", "--service", "mlflow", "--dir", stack.state_dir)
    assert stack.schema_revision() == head and stack.status()["mlflow"]["running"]
    assert "upgrading the database schema" in (stack.logs / "mlflow.log").read_text()
    log_a_run(stack, tmp_path, "after-upgrade")
