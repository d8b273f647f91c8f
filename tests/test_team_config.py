"""The team stack's choices made before anything runs: which PostgreSQL server binaries a cluster runs with
(its own major version, never merely the newest installed), which addresses the stack may listen on, which
certificates it takes for them, and what the unprivileged account its services run as can reach."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import make_certificate, outside_address
from ddpmlab.team import postgres, tls
from ddpmlab.team.processes import TeamStackError
from ddpmlab.team.service_account import Account, blocked_by


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Debian-style /usr/lib/postgresql with servers 15 and 16 (empty files where the binaries go)."""
    root = tmp_path / "usr-lib-postgresql"
    for major in ("15", "16"):
        (root / major / "bin").mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (root / major / "bin" / tool).touch()
    monkeypatch.setattr(postgres, "DEBIAN_SERVERS", root)
    return root


def test_a_cluster_runs_with_the_server_of_its_own_major_version_after_a_newer_one_is_installed(installed: Path, tmp_path: Path):
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "PG_VERSION").write_text("15\n")
    assert postgres.bin_dir(cluster) == installed / "15" / "bin"
    assert postgres.bin_dir(tmp_path / "new-cluster") == installed / "16" / "bin"  # initdb: the newest
    assert postgres.bin_dir() == installed / "16" / "bin"


def test_a_cluster_whose_server_is_not_installed_is_refused_naming_the_package(installed: Path, tmp_path: Path):
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "PG_VERSION").write_text("14\n")
    with pytest.raises(TeamStackError, match=r"PostgreSQL 14, whose server is not installed .*apt-get install postgresql-14"):
        postgres.bin_dir(cluster)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "mlflow.example.org"])
def test_an_address_other_machines_reach_without_tls_is_refused_before_anything_is_made(tmp_path: Path, host: str):
    """Logins and S3 keys would cross the network in plain HTTP: the refusal names both ways out."""
    from click.testing import CliRunner

    from ddpmlab.cli import main
    from ddpmlab.team.stack import TeamStack

    with pytest.raises(TeamStackError, match=r"--tls-cert FILE --tls-key FILE.*TLS reverse proxy"):
        TeamStack(tmp_path / "state", host=host)
    result = CliRunner().invoke(main, ["team", "up", "--dir", str(tmp_path / "cli"), "--host", host],
                                env={"DDPMLAB_TEAM_ADMIN_PASSWORD": "a-long-enough-password"})  # fmt: skip
    assert result.exit_code == 1 and f"--host {host!r} would put" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "cli").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_accepted(tmp_path: Path, host: str):
    from ddpmlab.team.stack import TeamStack

    assert TeamStack(tmp_path / "state", host=host).host == host


def test_a_certificate_for_the_host_is_taken_and_a_wrong_one_refused_before_anything_is_made(tmp_path: Path):
    from ddpmlab.team.stack import TeamStack

    host = outside_address()
    cert, key = make_certificate(tmp_path / "good", [host])
    stack = TeamStack(tmp_path / "state", host=host, tls_cert=cert, tls_key=key)
    assert stack.tracking_uri.startswith(f"https://{host}:") and stack.s3_endpoint.startswith(f"https://{host}:")
    assert stack.internal_host == "127.0.0.1"  # PostgreSQL and the store's own listeners
    assert set(stack.state["ports"]) >= {"s3", "s3_public"}

    _, other_key = make_certificate(tmp_path / "other", [host])
    elsewhere, elsewhere_key = make_certificate(tmp_path / "elsewhere", ["192.0.2.254", "mlflow.example.test"])
    refused = [
        ({"tls_cert": cert, "tls_key": other_key}, "are not a certificate and its key"),
        ({"tls_cert": elsewhere, "tls_key": elsewhere_key}, r"names mlflow\.example\.test, 192\.0\.2\.254 .*not the stack's host"),
        ({"tls_cert": cert}, "go together"),
        ({"host": "0.0.0.0", "tls_cert": cert, "tls_key": key}, "every address"),
    ]
    for number, (given, why) in enumerate(refused):
        with pytest.raises(TeamStackError, match=why):
            TeamStack(tmp_path / f"state-{number}", **{"host": host, **given})
        assert not (tmp_path / f"state-{number}").exists()


def test_an_address_of_another_machine_is_refused_naming_it(tmp_path: Path):
    from ddpmlab.team.stack import TeamStack

    cert, key = make_certificate(tmp_path / "tls", ["192.0.2.254"])  # a good certificate: the address is what is wrong
    with pytest.raises(TeamStackError, match=r"cannot listen on '192\.0\.2\.254'.*an address of this machine"):
        TeamStack(tmp_path / "state", host="192.0.2.254", tls_cert=cert, tls_key=key)


@pytest.mark.parametrize(("names", "host", "valid"), [
    (["192.0.2.7"], "192.0.2.7", True), (["192.0.2.7"], "192.0.2.70", False), (["::1"], "[::1]", True),
    (["mlflow.lab.org"], "MLflow.lab.org", True), (["*.lab.org"], "mlflow.lab.org", True),
    (["*.lab.org"], "a.mlflow.lab.org", False), (["*.lab.org"], "lab.org", False), (["192.0.2.7"], "host.lab.org", False),
])  # fmt: skip
def test_a_certificate_covers_a_host_as_rfc_6125_matches_it(names: list[str], host: str, valid: bool):
    assert tls.covers(names, host) is valid


def test_a_folder_closed_to_the_service_account_is_named():
    """Read from the mode bits as the kernel decides for that uid: owner, group, then others."""
    stranger = Account("stranger", uid=54321, gid=54321)
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # below folders open to all (pytest's own are 0700)
    try:
        base.chmod(0o755)
        closed = base / "closed"
        program = closed / "bin" / "python"
        program.parent.mkdir(parents=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
        closed.chmod(0o700)
        assert blocked_by(program, stranger, execute=True) == closed
        closed.chmod(0o711)
        assert blocked_by(program, stranger, execute=True) is None
        program.chmod(0o744)
        assert blocked_by(program, stranger, execute=True) == program  # readable, not runnable
        owner = Account("owner", uid=closed.stat().st_uid, gid=closed.stat().st_gid)
        closed.chmod(0o700)
        program.chmod(0o700)
        assert blocked_by(program, owner, execute=True) is None
        group = Account("group", uid=54321, gid=closed.stat().st_gid)
        closed.chmod(0o710)
        program.chmod(0o750)
        assert blocked_by(program, group, execute=True) is None and blocked_by(program, stranger, execute=True) == closed
    finally:
        shutil.rmtree(base)
