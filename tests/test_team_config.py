"""The team stack's choices made before anything runs: which PostgreSQL server binaries a cluster runs with
(its own major version, never merely the newest installed), and which addresses the stack may listen on."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpmlab.team import postgres
from ddpmlab.team.processes import TeamStackError


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
def test_an_address_other_machines_reach_is_refused_before_anything_is_made(tmp_path: Path, host: str):
    """The services speak plain HTTP and the object store's internal listeners would bind the address too."""
    from click.testing import CliRunner

    from ddpmlab.cli import main
    from ddpmlab.team.stack import TeamStack

    with pytest.raises(TeamStackError, match="TLS reverse proxy"):
        TeamStack(tmp_path / "state", host=host)
    result = CliRunner().invoke(main, ["team", "up", "--dir", str(tmp_path / "cli"), "--host", host],
                                env={"DDPMLAB_TEAM_ADMIN_PASSWORD": "a-long-enough-password"})  # fmt: skip
    assert result.exit_code == 1 and f"--host {host!r} would put" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "cli").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_accepted(tmp_path: Path, host: str):
    from ddpmlab.team.stack import TeamStack

    assert TeamStack(tmp_path / "state", host=host).host == host
