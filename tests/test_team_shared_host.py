"""The team stack as a lab puts it on a shared server: on an address other machines reach, with a
certificate, started by root. Checked for real (one stack for the module): only MLflow and S3
listen outside loopback, both in TLS, plain HTTP gets nothing; a person's DVC key works over
TLS through `team dvc-remote --ca-bundle`; the services run as the unprivileged `ddpmlab`
account, their secrets readable by it alone; a Python that account cannot run is refused
before anything starts."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import make_certificate, needs_postgresql, outside_address
from ddpmlab.cli import main as ddpmlab_command
from ddpmlab.team.credentials import load as load_key
from ddpmlab.team.processes import TeamStackError, as_root
from ddpmlab.team.service_account import SERVICE_USER
from ddpmlab.team.stack import TeamStack

ADMIN_PASSWORD = f"admin-{secrets.token_hex(10)}"
pytestmark = [needs_postgresql, pytest.mark.usefixtures("service_python")]
S3_CONFIG = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                   retries={"max_attempts": 1})  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, service_python) -> Iterator[TeamStack]:
    host = outside_address()
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"), [host])
    team = TeamStack(tmp_path_factory.mktemp("team") / "state", host=host, mlflow_port=0, tls_cert=cert, tls_key=key)
    try:
        assert team.up(ADMIN_PASSWORD, timeout_s=180) is True
        yield team
    finally:
        team.destroy()


def listeners_of(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket that one of ``pids`` holds."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            address, _, port = line.split()[3].rpartition(":")
            found.append((address.strip("[]"), int(port)))
    return found


def test_only_mlflow_and_s3_listen_outside_loopback(stack: TeamStack):
    pids = {pid for group in stack.pids().values() for pid in group}
    found = listeners_of(pids)
    ports = stack.state["ports"]
    outside = {(address, port) for address, port in found if not address.startswith("127.")}
    assert outside == {(stack.host, ports["mlflow"]), (stack.host, ports["s3_public"])}, found
    internal = {port for address, port in found if address.startswith("127.")}
    assert {ports["postgres"], ports["s3"], ports["s3_grpc"], ports["master"] + 10000, ports["filer"] + 10000} <= internal


def test_mlflow_and_s3_answer_in_tls_only(stack: TeamStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(stack.trust_bundle))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    client = MlflowClient(stack.tracking_uri)
    run_id = client.create_run(client.get_experiment_by_name("ddpmlab").experiment_id).info.run_id
    (tmp_path / "note.txt").write_text("over TLS\n")
    client.log_artifact(run_id, str(tmp_path / "note.txt"))  # through MLflow to the store's own S3
    back = client.download_artifacts(run_id, "note.txt", str(tmp_path / "back"))
    assert Path(back).read_text() == "over TLS\n"
    for port in (stack.state["ports"]["mlflow"], stack.state["ports"]["s3_public"]):
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # plain HTTP: no answer at all
            urllib.request.urlopen(f"http://{stack.host}:{port}/", timeout=10)
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")  # a client that does not trust the certificate refuses it
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # at once, not after MLflow's minutes of back-off
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        MlflowClient(stack.tracking_uri).get_experiment_by_name("ddpmlab")


def test_a_persons_key_works_over_tls_with_dvc(stack: TeamStack, tmp_path: Path):
    key_file = stack.issue_dvc_key("alice", write=True, path=tmp_path / "alice.s3-credentials")
    key = load_key(key_file)
    assert key.endpoint == stack.s3_endpoint and key.endpoint.startswith("https://")
    s3 = boto3.client("s3", endpoint_url=key.endpoint, region_name="us-east-1", config=S3_CONFIG, verify=str(stack.trust_bundle),
                      aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key)  # fmt: skip
    s3.put_object(Bucket="dvc", Key="probe/blob", Body=os.urandom(3 << 20))  # several TLS records each way
    assert len(s3.get_object(Bucket="dvc", Key="probe/blob")["Body"].read()) == 3 << 20

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    bundle = tmp_path / "stack-ca.pem"
    bundle.write_bytes(stack.trust_bundle.read_bytes())  # the admin hands a copy out with the key
    result = CliRunner().invoke(ddpmlab_command, ["team", "dvc-remote", "--credentials", str(key_file), "--repo", str(repo),
                                                  "--ca-bundle", str(bundle)], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    (repo / "data.txt").write_text("pushed over TLS\n")
    for command in (["add", "-q", "data.txt"], ["push", "-q"]):
        done = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=repo, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    (repo / "data.txt").unlink()
    subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(tmp_path / "empty-cache")], cwd=repo, check=True)
    done = subprocess.run([sys.executable, "-m", "dvc", "pull", "-q"], cwd=repo, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (repo / "data.txt").read_text() == "pushed over TLS\n"


def test_a_dead_tls_front_counts_as_a_stopped_store_and_start_brings_it_back(stack: TeamStack):
    from ddpmlab.team.processes import stop_group
    from ddpmlab.team.stack import GATEWAY

    store_pid = stack._pid("object_store")[0]
    stop_group(*stack._pid(GATEWAY))  # as if it crashed
    assert not stack.status()["object_store"]["running"]
    stack.start_service("object_store")
    assert stack.status()["object_store"]["running"] and stack._pid("object_store")[0] == store_pid  # the store itself kept running
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1", config=S3_CONFIG, verify=str(stack.trust_bundle),
                      aws_access_key_id=stack.s3_admin_key[0], aws_secret_access_key=stack.s3_admin_key[1])  # fmt: skip
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} >= {"dvc", "mlflow-artifacts"}


def uid_of(pid: int) -> int:
    return int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE).group(1))


@pytest.mark.skipif(not as_root(), reason="started as a normal user, the services run as that user")
def test_as_root_the_services_run_as_an_unprivileged_account(stack: TeamStack):
    account = pwd.getpwnam(SERVICE_USER)
    postgres = pwd.getpwnam("postgres")
    assert account.pw_uid != 0
    processes = stack.pids()
    assert all(processes.values()), processes
    for name, pids in processes.items():
        wanted = postgres.pw_uid if name == "postgres" else account.pw_uid
        assert {uid_of(pid) for pid in pids} == {wanted}, (name, pids)
    # The services' own files: the account's alone (the folder 0700, each secret 0600), none in the root's state folder.
    folder = stack.service_dir
    assert folder != stack.state_dir and stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == account.pw_uid
    for name in ("mlflow-auth.ini", "pgpass-mlflow", "s3-identities.json", "tls/key.pem", "seaweedfs/security.toml"):
        info = (folder / name).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, account.pw_uid), name
    assert ADMIN_PASSWORD not in "".join(p.read_text(errors="replace") for p in stack.state_dir.rglob("*") if p.is_file())


@pytest.mark.skipif(not as_root(), reason="started as a normal user, the services run as that user")
def test_a_python_the_service_account_cannot_run_is_refused_before_anything_starts(tmp_path: Path):
    closed = tmp_path / "closed"  # pytest's folders are root's, 0700: closed to the account
    closed.mkdir()
    python = closed / "python"
    python.symlink_to(sys.executable)
    closed.chmod(0o700)
    state = tmp_path / "state"
    stack = TeamStack(state, mlflow_port=0, service_python=python)
    with pytest.raises(TeamStackError, match=rf"cannot start with {re.escape(str(python))} as the unprivileged user 'ddpmlab' .*is closed to it.*--service-python"):
        stack.up(ADMIN_PASSWORD, timeout_s=60)
    try:
        assert not any(info["running"] for info in stack.status().values())
    finally:
        stack.destroy()
