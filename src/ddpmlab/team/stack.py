"""The team stack: PostgreSQL (MLflow's tracking and login stores), SeaweedFS (S3 for MLflow's
artifacts and a DVC remote) and `mlflow server --app-name basic-auth` in front of both, each a
detached process of this machine.

Where they listen: on a loopback host (default 127.0.0.1), everything, in plain HTTP. On any
other address, only MLflow and S3 (through a TLS front, tls_proxy.py), both in TLS with the
certificate given (--tls-cert / --tls-key); PostgreSQL and the object store's internal
listeners stay on 127.0.0.1 whatever the host.

The stack's folder (the state folder) holds what the stack itself reads:

    state.json          host, ports, pids, paths: enough for TeamStack.load() from any process
    secrets.json        PostgreSQL passwords, the stack's and MLflow's S3 keys (0600): servers only, never clients
    pgpass              libpq passfile (0600) of both database roles, for the stack itself
    people/<name>.s3-credentials  a person's key to the dvc bucket, to hand to them (0600)
    tls-trust.pem       with TLS: the CA bundle clients verify the stack with (the system's and the certificate)
    logs/<service>.log  each service's output

The services' own files sit in their folder (:mod:`ddpmlab.team.service_account`): the state
folder itself, or, started as root, one of the unprivileged account they then run as:

    pgpass-mlflow       MLflow's: its own role's password alone (PostgreSQL URIs and command lines carry none)
    s3-identities.json  SeaweedFS's static S3 identities (0600): the stack's and MLflow's
    mlflow-auth.ini     MLflow's basic-auth settings (0600): the only place holding the admin password
    tls/                copies of the certificate and its key, which the services read
    home/               the services' HOME
    seaweedfs/          the object store's data

The PostgreSQL cluster is in postgres/ (as root: /var/lib/postgresql/ddpmlab/<hash>, see postgres.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ddpmlab.team import accounts, tls
from ddpmlab.team.credentials import check_name
from ddpmlab.team.object_store import BUCKETS, CHECKSUM_ENV, GRPC_OFFSET, INTERNAL, REGION, ObjectStore, weed_binary
from ddpmlab.team.postgres import LEGACY_SUPERUSER, SUPERUSER, Postgres, cluster_dir
from ddpmlab.team.processes import (
    TeamStackError,
    alive,
    as_root,
    child_env,
    free_port,
    group_members,
    log_tail,
    port_free,
    run_as,
    spawn,
    stop_group,
    wait_until,
    write_private,
)
from ddpmlab.team.service_account import Account, blocked_by, make_private_dir, service_account, service_dir

log = logging.getLogger(__name__)

SERVICES = ("postgres", "object_store", "mlflow")  # start order; down() stops in reverse
SERVICE_PYTHON_ENV = "DDPMLAB_TEAM_SERVICE_PYTHON"  # the default of --service-python
GATEWAY = "s3_tls"  # with TLS, part of the object store: its S3 for clients on the host, in TLS (tls_proxy.py)
MIN_PASSWORD_LENGTH = 12  # MLflow's own rule for basic-auth passwords
LEGACY_DEFAULT_PASSWORD = "password1234"  # the admin password older MLflow shipped: public
GRACEFUL_SHUTDOWN_S = 5  # how long a stopping MLflow waits for open requests
MLFLOW_WORKERS = 2  # uvicorn workers: one can serve while the other waits on the database
WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACK = "127.0.0.1"  # where PostgreSQL and the object store's internal listeners are, whatever the host


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_host(host: str, tls: bool = False) -> str:
    """Refuse an address other machines can reach unless the stack has TLS: logins and S3 keys
    would cross the network in clear text. With TLS, a wildcard is refused too: the certificate
    names one address, and the stack's own calls must reach that one."""
    if is_loopback(host):
        return host
    if not tls:
        raise TeamStackError(
            f"--host {host!r} would put the stack's passwords and S3 keys on the network in plain HTTP. Either give the "
            "stack a certificate (--tls-cert FILE --tls-key FILE, for the name or address of --host), or keep it on "
            "127.0.0.1 and publish MLflow and S3 through a TLS reverse proxy on this host "
            "(docs/team.md#deploying-it-for-a-team), naming it with --public-name"
        )
    if host in WILDCARDS:
        raise TeamStackError(f"--host {host!r} is every address: with TLS give the one its certificate names")
    return host


# MLflow checks the password hash (~0.1 s of CPU) on every request unless its login cache is on: on 2
# cores that caps the server at ~6 logging calls/s (benchmarks/tracking_load.py). The price of the
# cache: a changed password or deleted account may still work on the other worker for this long.
AUTH_CACHE_S = 30


def check_password(password: str | None, what: str = "the admin password") -> str:
    """Refuse a password that is empty, MLflow's old public default or short (ValueError)."""
    if not password:
        raise ValueError(f"{what} is empty: it needs {MIN_PASSWORD_LENGTH} characters or more")
    if password == LEGACY_DEFAULT_PASSWORD:
        raise ValueError(f"{what} is {LEGACY_DEFAULT_PASSWORD!r}, the public default of older MLflow versions: choose another")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"{what} has {len(password)} characters: it needs {MIN_PASSWORD_LENGTH} or more")
    if password != password.strip() or any(c in password for c in "\r\n\0"):
        raise ValueError(f"{what} may not start or end with whitespace or contain line breaks (MLflow reads it from an ini file)")
    return password


def check_admin_password(password: str | None) -> str:
    return check_password(password, "the admin password")


class TeamStack:
    """The stack whose state lives in ``state_dir``. Port 0 means a free port, chosen once: a state
    folder keeps its host and ports across down() and up(). ``tls_cert`` and ``tls_key``: PEM files
    for MLflow and S3 on a ``host`` other machines reach (required there). ``service_python``: the
    Python that runs MLflow (default: $DDPMLAB_TEAM_SERVICE_PYTHON, else this one), for a root
    whose Python the service account cannot reach. ``s3_port`` is the port
    clients use (the TLS front's, with TLS). ``auth_cache_s``: how long MLflow trusts a checked
    login (0: check the hash on every request), read at MLflow's start."""

    def __init__(
        self, state_dir: Path, host: str = "127.0.0.1", mlflow_port: int = 5000, postgres_port: int = 0, s3_port: int = 0,
        auth_cache_s: int = AUTH_CACHE_S, public_names: Iterable[str] = (), tls_cert: Path | None = None,
        tls_key: Path | None = None, service_python: Path | None = None,
    ) -> None:  # fmt: skip
        self.auth_cache_s = auth_cache_s
        self.public_names = list(public_names)  # names a reverse proxy forwards as Host: MLflow answers them
        self.state_dir = Path(state_dir).resolve()  # absolute: recorded, and hashed into the root cluster's folder
        saved = self._read(self.state_file)
        service_python = service_python or os.environ.get(SERVICE_PYTHON_ENV) or None
        if saved is None:
            check_host(host, tls=tls_cert is not None or tls_key is not None)
        tls_given = tls.check_pair(tls_cert, tls_key, host if saved is None else saved["host"])
        if saved is None:
            internal = host if is_loopback(host) else LOOPBACK
            taken: set[int] = set()
            ports = {"mlflow": mlflow_port or free_port(host, taken), "postgres": postgres_port or free_port(internal, taken)}
            if tls_given:  # S3 for clients: a TLS front on the host; the store's own S3 stays inside
                ports.update(s3_public=s3_port or free_port(host, taken), s3=free_port(internal, taken))
            else:
                ports["s3"] = s3_port or free_port(internal, taken)
            taken.update(ports.values())
            ports["s3_grpc"] = free_port(internal, taken)
            ports.update({name: free_port(internal, taken, grpc_offset=GRPC_OFFSET) for name in INTERNAL})
            self.state: dict[str, Any] = {
                "host": host, "internal_host": internal, "ports": ports, "postgres_dir": str(cluster_dir(self.state_dir)),
                "postgres_roles": "split", "service_dir": str(service_dir(self.state_dir)), "tls": tls_given,
            }  # fmt: skip
            if service_python is not None:
                self.state["service_python"] = str(Path(service_python).absolute())
            return
        self.state = {k: v for k, v in saved.items() if k != "pids"}  # pids: read from the file each time (others change them)
        ports = saved["ports"]
        fixed = (
            ("host", host, saved["host"]),
            ("postgres port", postgres_port, ports["postgres"]),
            ("S3 port", s3_port, ports.get("s3_public", ports["s3"])),
        )
        for what, given, recorded in fixed:
            if given and given != recorded:
                raise TeamStackError(
                    f"the team stack in {self.state_dir} has {what} {recorded}, not {given}: use that or another folder"
                )
        if mlflow_port and mlflow_port != ports["mlflow"]:  # MLflow alone may move: nothing stored depends on its port
            if self._running("mlflow"):
                raise TeamStackError(
                    f"MLflow of the team stack in {self.state_dir} runs on port {ports['mlflow']}: stop it first"
                )
            ports["mlflow"] = mlflow_port
        if tls_given is not None and tls_given != self.state.get("tls"):  # moved files: the copies are made at each start
            if not self.state.get("tls"):
                raise TeamStackError(f"the team stack in {self.state_dir} has no TLS listeners: make a new one with --tls-cert")
            self.state["tls"] = tls_given
        if service_python is not None:  # a new Python for MLflow: used from its next start
            self.state["service_python"] = str(Path(service_python).absolute())

    @classmethod
    def load(cls, state_dir: Path) -> TeamStack:
        """The stack set up in ``state_dir`` (by up() in any process)."""
        state_dir = Path(state_dir).resolve()
        saved = cls._read(state_dir / "state.json")
        if saved is None:
            raise TeamStackError(f"no team stack in {state_dir} (no state.json): `ddpmlab team up --dir {state_dir}` starts one")
        ports = saved["ports"]
        return cls(state_dir, saved["host"], ports["mlflow"], ports["postgres"], ports.get("s3_public", ports["s3"]))

    # -- files ---------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise TeamStackError(f"{path} is not valid JSON ({e}): fix or remove it") from e

    def _save(self, **pids: list[int] | None) -> None:
        """Write the state, with the pids of ``pids`` (None: stopped) over those in the file, which
        other processes (another `ddpmlab team` command) may have changed since this one read it."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.state_dir / ".state.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one read-modify-write at a time
            current = (self._read(self.state_file) or {}).get("pids", {})
            for name, value in pids.items():
                if value is None:
                    current.pop(name, None)
                else:
                    current[name] = value
            write_private(self.state_file, json.dumps({**self.state, "pids": current}, indent=2, sort_keys=True) + "\n")

    def _secrets(self, create: bool = False) -> dict[str, str]:
        """The generated secrets (created by the first up): PostgreSQL's password, the stack's S3 key
        pair, MLflow's, and the key MLflow signs its CSRF tokens with (stable, so sessions survive a
        restart). A stack made before MLflow had a key of its own gets one at its next up."""
        path = self.state_dir / "secrets.json"
        found = self._read(path)
        if found is None and not create:
            raise TeamStackError(f"{path} is missing: the stack in {self.state_dir} was never brought up (`ddpmlab team up`)")
        wanted = {
            "postgres_password": lambda: secrets.token_urlsafe(32),
            "postgres_mlflow_password": lambda: secrets.token_urlsafe(32),
            "s3_access_key": lambda: "DDPM" + secrets.token_hex(8).upper(),
            "s3_secret_key": lambda: secrets.token_urlsafe(30),
            "s3_mlflow_access_key": lambda: "MLFLOW" + secrets.token_hex(8).upper(),
            "s3_mlflow_secret_key": lambda: secrets.token_urlsafe(30),
            "flask_secret_key": lambda: secrets.token_hex(32),
        }
        missing = {key: make() for key, make in wanted.items() if key not in (found or {})}
        if missing and (create or found is not None):  # a stack older than a secret gets it at its next start
            found = {**(found or {}), **missing}
            write_private(path, json.dumps(found, indent=2) + "\n")
        return found

    def _write_auth_config(self, admin_password: str) -> None:
        """MLflow's basic-auth ini. The password only creates the admin on the first start (an
        empty login store); later starts keep the admin's password whatever the ini says."""
        escaped = admin_password.replace("%", "%%")  # configparser interpolates %
        write_private(self.auth_config, "\n".join([
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = {self._postgres().uri('mlflow_auth')}",
            f"admin_username = {accounts.ADMIN}",
            f"admin_password = {escaped}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            f"auth_cache_ttl_seconds = {self.auth_cache_s}",
        ]) + "\n", self.account)  # fmt: skip

    @property
    def auth_config(self) -> Path:
        return self.service_dir / "mlflow-auth.ini"

    @property
    def service_dir(self) -> Path:
        """The services' own files (see the module's docstring); a stack from before it: the state folder."""
        return Path(self.state.get("service_dir", self.state_dir))

    @property
    def account(self) -> Account | None:
        """The unprivileged account the object store and MLflow run as (None: this process's user)."""
        if "service_dir" not in self.state:  # made before services ran as their own account: as before
            return None
        return service_account()

    @property
    def tls(self) -> dict[str, str] | None:
        return self.state.get("tls")

    @property
    def trust_bundle(self) -> Path:
        """With TLS: the CA bundle that verifies the stack (give it to clients)."""
        return self.state_dir / "tls-trust.pem"

    @contextlib.contextmanager
    def trusted(self):
        """MLflow calls of this process (the admin's, MlflowClient's) verify a TLS stack with its trust
        bundle meanwhile, unless the caller named a bundle of their own."""
        if not self.tls or os.environ.get(accounts.CERT_ENV):
            yield
            return
        os.environ[accounts.CERT_ENV] = str(self.trust_bundle)
        try:
            yield
        finally:
            os.environ.pop(accounts.CERT_ENV, None)

    def _tls_copies(self) -> tuple[Path, Path]:
        """The certificate and key where the services read them, refreshed from the admin's files."""
        folder = self.service_dir / "tls"
        make_private_dir(folder, self.account)
        cert, key = folder / "cert.pem", folder / "key.pem"
        tls.install_copy(self.tls["cert"], cert, self.account)
        tls.install_copy(self.tls["key"], key, self.account)
        tls.write_trust_bundle(cert, self.trust_bundle)
        return cert, key

    def _service_env(self) -> dict[str, str]:
        """What the services get of this process's environment: the allow-listed part, with their own
        HOME (and name) when they run as the service account."""
        env = child_env()
        account = self.account
        if account is not None:
            home = self.service_dir / "home"
            make_private_dir(home, account)
            env.update(HOME=str(home), USER=account.name, LOGNAME=account.name)
        return env

    def _check_reachable(self, path: Path) -> None:
        """Fail, naming the folder, when the service account cannot run ``path`` (`weed`)."""
        account = self.account
        blocked = blocked_by(path.resolve(), account, execute=True) if account is not None else None
        if blocked is not None:
            raise TeamStackError(
                f"as root, the team stack's services run as the unprivileged user {account.name!r}, which cannot run "
                f"{path} ({blocked} is closed to it): install ddpmlab where other users can read it (a virtualenv under "
                "/opt, say), or start the stack as a normal user"
            )

    @property
    def python(self) -> Path:
        """The Python that runs MLflow: --service-python, else this one."""
        return Path(self.state.get("service_python") or sys.executable)

    def _check_python(self) -> None:
        """Fail with a way out unless MLflow's server (and the TLS front) import in :attr:`python` as the
        account the services run as (as root, a Python under root's home is closed to it: pyenv's, a
        venv of root's)."""
        if (self.account is None and "service_python" not in self.state) or getattr(self, "_python_checked", False):
            return  # this very Python, as this very user: it runs
        try:
            probe = subprocess.run([str(self.python), "-c", "import mlflow.server, ddpmlab.team.tls_proxy"], capture_output=True,
                                   text=True, timeout=300, env=self._service_env(), cwd=self.service_dir, check=False,
                                   **run_as(self.account))  # fmt: skip
            said = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        except OSError as e:  # not even started: not found, or not runnable by the account
            probe, said = None, e.strerror
        if probe is not None and probe.returncode == 0:
            self._python_checked = True
            return
        blocked = blocked_by(self.python, self.account, execute=True) if self.account else None
        blocked = blocked or (blocked_by(self.python.resolve(), self.account, execute=True) if self.account else None)
        why = f"{blocked} is closed to it" if blocked else said
        who = f"the unprivileged user {self.account.name!r}" if self.account else "this user"
        raise TeamStackError(
            f"MLflow's server cannot start with {self.python} as {who} ({why}). Give the stack a Python with "
            "ddpmlab's team extra that this user can run: `ddpmlab team up --service-python /opt/ddpmlab/bin/python` "
            "(e.g. a virtualenv under /opt of /usr/bin/python3), or start the stack as a normal user"
        )

    # -- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.state["host"]

    def _client_host(self) -> str:
        host = "127.0.0.1" if self.host in WILDCARDS else self.host
        return f"[{host}]" if ":" in host else host

    @property
    def internal_host(self) -> str:
        """Where PostgreSQL and the object store's own listeners are (the host itself in older stacks)."""
        return self.state.get("internal_host", self.host)

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def tracking_uri(self) -> str:
        return f"{self._scheme}://{self._client_host()}:{self.state['ports']['mlflow']}"

    @property
    def s3_endpoint(self) -> str:
        """The S3 address for clients (DVC): the TLS front's, with TLS."""
        ports = self.state["ports"]
        return f"{self._scheme}://{self._client_host()}:{ports.get('s3_public', ports['s3'])}"

    @property
    def s3_admin_key(self) -> tuple[str, str]:
        """(access key id, secret access key) of the stack's own identity: every bucket, every action."""
        found = self._secrets()
        return found["s3_access_key"], found["s3_secret_key"]

    @property
    def s3_mlflow_key(self) -> tuple[str, str]:
        """MLflow's key: the artifact bucket only."""
        found = self._secrets()
        return found["s3_mlflow_access_key"], found["s3_mlflow_secret_key"]

    def bucket(self, name: str) -> str:
        """The name of the stack's bucket ``name`` ("mlflow-artifacts" or "dvc"), checked."""
        if name not in BUCKETS:
            raise ValueError(f"no bucket {name!r} in the team stack: it has {', '.join(BUCKETS)}")
        return name

    # -- services ------------------------------------------------------------------------------

    def _postgres(self) -> Postgres:
        port = self.state["ports"]["postgres"]
        # A stack from before the split of roles keeps its cluster, whose bootstrap superuser is MLflow's role.
        superuser = SUPERUSER if self.state.get("postgres_roles") == "split" else LEGACY_SUPERUSER
        return Postgres(Path(self.state["postgres_dir"]), self.internal_host, port, self.state_dir / "pgpass",
                        self.service_dir / "pgpass-mlflow", self.logs / "postgres.log", superuser)  # fmt: skip

    def _store(self) -> ObjectStore:
        ports, config = self.state["ports"], self.service_dir / "s3-identities.json"
        return ObjectStore(self.service_dir / "seaweedfs", self.internal_host, ports["s3"], ports, config, self.s3_admin_key,
                           self.s3_mlflow_key, owner=self.account)  # fmt: skip

    def _pid(self, name: str) -> tuple[int | None, int | None]:
        pid, ticks = ((self._read(self.state_file) or {}).get("pids") or {}).get(name) or (None, None)
        return pid, ticks

    def _running(self, name: str) -> bool:
        if name == "postgres":
            return self._postgres().running()
        if name == "object_store" and self.tls and not alive(*self._pid(GATEWAY)):
            return False
        return alive(*self._pid(name))

    def _check(self, name: str) -> None:
        if name not in SERVICES:
            raise ValueError(f"no service {name!r}: the team stack has {', '.join(SERVICES)}")

    def _mlflow_env(self) -> dict[str, str]:
        access, secret = self.s3_mlflow_key
        # Only the allow-listed part of the caller's environment: no admin password, no settings of theirs.
        return self._service_env() | CHECKSUM_ENV | {
            "MLFLOW_S3_ENDPOINT_URL": self._store().endpoint,  # the store's own S3 (inside the machine, with TLS too)
            "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
            "PGPASSFILE": str(self._postgres().service_passfile), "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self._secrets()["flask_secret_key"],  # basic-auth's CSRF protection needs one
            # No job runner: its 7 huey consumers (~1.5 GB) serve GenAI scorers and trace archival, nothing of ddpmlab's.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }  # fmt: skip

    def allowed_hosts(self) -> list[str]:
        """The Host headers MLflow answers (against DNS rebinding): this machine's loopback names and the
        public names of a reverse proxy in front, each with and without the port."""
        port = self.state["ports"]["mlflow"]
        names = ["localhost", "127.0.0.1", "[::1]", *self.state.get("public_names", [])]
        if self.host not in WILDCARDS and self._client_host() not in names:
            names.append(self._client_host())  # a TLS stack's own address
        return [spelling for name in names for spelling in (name, f"{name}:{port}")]

    def _mlflow_command(self, tls_files: tuple[Path, Path] | None = None) -> list[str]:
        origins = [f"https://{name}" for name in self.state.get("public_names", [])]
        # uvicorn's options, which MLflow hands on. A client's idle keep-alive connection would hold a SIGTERM'd
        # server for good (it was killed 30 s later when measured): let it go after a few seconds.
        uvicorn = f"--timeout-graceful-shutdown {GRACEFUL_SHUTDOWN_S}"
        if tls_files:  # uvicorn serves TLS itself
            cert, key = tls_files
            origins.append(f"https://{self._client_host()}:{self.state['ports']['mlflow']}")
            uvicorn += f" --ssl-certfile {shlex.quote(str(cert))} --ssl-keyfile {shlex.quote(str(key))}"
        return [
            str(self.python), "-m", "mlflow", "server", "--host", self.host, "--port", str(self.state["ports"]["mlflow"]),
            "--backend-store-uri", self._postgres().uri("mlflow"), "--artifacts-destination", "s3://mlflow-artifacts/",
            "--app-name", "basic-auth", "--workers", str(MLFLOW_WORKERS), "--allowed-hosts", ",".join(self.allowed_hosts()),
            *(["--cors-allowed-origins", ",".join(origins)] if origins else []), "--uvicorn-opts", uvicorn,
        ]  # fmt: skip

    def _mlflow_answers(self) -> bool:
        context = tls.client_context(self.trust_bundle) if self.tls else None
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=5, context=context) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start_service(self, name: str, timeout_s: float = 180) -> None:
        """Start one service (when it does not run) and wait until it answers; when it does not,
        stop it again and fail with the end of its log."""
        self._check(name)
        if self._running(name):
            return
        if name == "object_store" and self.tls and alive(*self._pid(name)):  # the store runs, its TLS front died
            self._start_tls_front(self._store(), timeout_s)
            return
        self._check_ports(name)
        start = {"postgres": self._start_postgres, "object_store": self._start_object_store, "mlflow": self._start_mlflow}[name]
        try:
            start(timeout_s)
        except BaseException:
            try:
                self.stop_service(name)
            except (TeamStackError, OSError, subprocess.SubprocessError) as e:  # the start's failure is the one to report
                log.warning("team stack: could not stop %s after its failed start: %s", name, e)
            raise
        self._save()
        log.info("team stack: %s started", name)

    def _check_ports(self, name: str) -> None:
        """Fail at once, naming it, when a port of service ``name`` is taken (e.g. 5000 by another `mlflow ui`)."""
        ports = self.state["ports"]
        wanted = {"postgres": [ports["postgres"]], "mlflow": [ports["mlflow"]]}.get(name)
        if wanted is None:  # the object store: S3 and every internal http and gRPC port
            wanted = [ports["s3"], ports["s3_grpc"], *(ports[n] + offset for n in INTERNAL for offset in (0, GRPC_OFFSET))]
        host = self.host if name == "mlflow" else self.internal_host
        taken = [port for port in wanted if not port_free(host, port)]
        if name == "object_store" and self.tls and not port_free(self.host, ports["s3_public"]):
            taken.append(ports["s3_public"])
        if taken:
            raise TeamStackError(
                f"{name}: port {', '.join(map(str, taken))} on {host} is in use by another program: stop it, or give the "
                f"stack another port{' (--port)' if name == 'mlflow' else ''} or state folder"
            )

    def _start_postgres(self, timeout_s: float) -> None:
        pg = self._postgres()
        found = self._secrets()
        password, service_password = found["postgres_password"], found["postgres_mlflow_password"]
        if not pg.initialised():
            pg.init(password)
        pg.write_passfiles(password, service_password, self.account)
        pg.start(timeout_s)
        wait_until(pg.healthy, timeout_s, "PostgreSQL", pg.log, pg.pid(), pg.ticks())
        pg.create_databases(service_password)
        if pg.legacy:
            log.warning(
                "team stack: MLflow's database role is the superuser of this cluster (made before ddpmlab split the roles): "
                "`ddpmlab team backup --to DIR`, `team up --dir NEW` and `team restore --from DIR --dir NEW` move everything "
                "to a stack whose role has no superuser rights"
            )
        self._save(postgres=[pg.pid(), pg.ticks()])

    def _start_object_store(self, timeout_s: float) -> None:
        store = self._store()
        self._check_reachable(weed_binary())
        make_private_dir(self.service_dir, self.account)
        make_private_dir(store.data_dir, self.account)
        store.write_config()
        store.write_security()
        log_file, env = self.logs / "object_store.log", self._service_env()
        pid, ticks = spawn(store.command(), log_file, env=env, cwd=store.data_dir, account=self.account)
        self._save(object_store=[pid, ticks])  # another process can stop it from now on
        wait_until(store.healthy, timeout_s, "SeaweedFS", log_file, pid, ticks)
        store.ensure_buckets()
        if self.tls:
            self._start_tls_front(store, timeout_s)

    def _start_tls_front(self, store: ObjectStore, timeout_s: float) -> None:
        """S3 in TLS on the host, in front of the store's own S3 on loopback."""
        self._check_python()
        cert, key = self._tls_copies()
        ports, log_file = self.state["ports"], self.logs / f"{GATEWAY}.log"
        command = [str(self.python), "-m", "ddpmlab.team.tls_proxy", "--listen", f"{self._client_host()}:{ports['s3_public']}",
                   "--to", f"{store._ip}:{ports['s3']}", "--cert", str(cert), "--key", str(key)]  # fmt: skip
        pid, ticks = spawn(command, log_file, env=self._service_env(), cwd=self.service_dir, account=self.account)
        self._save(**{GATEWAY: [pid, ticks]})
        front = store.client(endpoint=self.s3_endpoint, verify=str(self.trust_bundle))
        wait_until(lambda: store.healthy(front), timeout_s, "the S3 TLS front", log_file, pid, ticks)

    def _start_mlflow(self, timeout_s: float) -> None:
        if not self.auth_config.is_file():
            raise TeamStackError(f"{self.auth_config} is missing: `ddpmlab team up` writes it (MLflow's login settings)")
        if not self._running("postgres"):
            raise TeamStackError("MLflow needs PostgreSQL: start it first (`ddpmlab team start --service postgres`)")
        log_file = self.logs / "mlflow.log"
        self._check_python()
        self._upgrade_schema(log_file, timeout_s)
        tls_files = self._tls_copies() if self.tls else None
        pid, ticks = spawn(self._mlflow_command(tls_files), log_file, env=self._mlflow_env(), cwd=self.service_dir,
                           account=self.account)  # fmt: skip
        self._save(mlflow=[pid, ticks])
        wait_until(self._mlflow_answers, timeout_s, "MLflow server", log_file, pid, ticks)

    def schema_revision(self) -> str | None:
        """The Alembic revision of MLflow's tracking database; None before MLflow's first start made its tables."""
        conn = self._postgres().connect("mlflow")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('public.alembic_version')")
                if cur.fetchone()[0] is None:
                    return None
                cur.execute("SELECT version_num FROM alembic_version")
                row = cur.fetchone()
        finally:
            conn.close()
        return row[0] if row else None

    def _upgrade_schema(self, log_file: Path, timeout_s: float) -> None:
        """`mlflow db upgrade` when the database's schema is older than this MLflow's (after an
        upgrade of MLflow, whose server refuses to start on an old schema). `team backup` first
        is the safe habit; the upgrade runs in one go, as MLflow's role, its output in the log."""
        from mlflow.store.db.utils import _get_latest_schema_revision

        found, head = self.schema_revision(), _get_latest_schema_revision()
        if found is None or found == head:
            return
        log.info("team stack: upgrading MLflow's database schema from %s to %s", found, head)
        with open(log_file, "ab") as out:
            out.write(f"\n--- upgrading the database schema from {found} to {head}\n".encode())
            out.flush()
            done = subprocess.run([str(self.python), "-m", "mlflow", "db", "upgrade", self._postgres().uri("mlflow")],
                                  env=self._mlflow_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
                                  cwd=self.service_dir, **run_as(self.account))  # fmt: skip
        if done.returncode != 0:
            raise TeamStackError(f"`mlflow db upgrade` from schema {found} to {head} failed; the end of {log_file}:\n{log_tail(log_file)}")

    def stop_service(self, name: str) -> None:
        """Stop one service (nothing happens when it does not run)."""
        self._check(name)
        if name == "postgres":
            self._postgres().stop()
        else:
            if name == "object_store":  # its TLS front first: it needs the store, not the other way round
                stop_group(*self._pid(GATEWAY))
                if self.state_file.is_file():
                    self._save(**{GATEWAY: None})
            stop_group(*self._pid(name))
        if self.state_file.is_file():
            self._save(**{name: None})

    # -- people's keys to the DVC bucket ---------------------------------------------------------

    def credentials_file(self, person: str) -> Path:
        return self.state_dir / "people" / f"{check_name(person)}.s3-credentials"

    def issue_dvc_key(self, person: str, write: bool, path: Path | None = None, secret: str | None = None) -> Path:
        """A new key to the dvc bucket for ``person`` (read-only unless ``write``), replacing any old
        one, saved 0600 at ``path`` (default :meth:`credentials_file`) to hand to them. Needs the
        object store running. ``secret``: a given secret instead of a generated one."""
        if not self._running("object_store"):
            raise TeamStackError("the object store is stopped: `ddpmlab team start --service object_store` first")
        key = self._store().issue_key(person, write, secret)
        path = Path(path) if path is not None else self.credentials_file(person)
        replace(key, endpoint=self.s3_endpoint).save(path, person)  # the address clients reach, not a wildcard
        return path

    def revoke_dvc_key(self, person: str) -> None:
        """Remove ``person``'s key to the dvc bucket and the copy this stack kept of it."""
        if not self._running("object_store"):
            raise TeamStackError("the object store is stopped: `ddpmlab team start --service object_store` first")
        self._store().revoke_key(person)
        self.credentials_file(person).unlink(missing_ok=True)

    # -- the whole stack -----------------------------------------------------------------------

    def up(self, admin_password: str, experiments: Iterable[str] = ("ddpmlab",), timeout_s: float = 180) -> bool:
        """Start what does not run (PostgreSQL, the object store, MLflow, in that order), check the
        admin's login and create ``experiments`` (as the admin) where missing. False when everything
        ran already, and then nothing is done. On a failure, what this call started is stopped again
        and the error carries the end of the failing service's log."""
        check_admin_password(admin_password)
        check_host(self.host, bool(self.tls))  # also a stack made before this rule
        if "service_dir" in self.state:
            service_account(create=True)  # as root: the account the services run as
        elif as_root():
            log.warning(
                "team stack: MLflow and the object store of this stack run as root (it was made before ddpmlab ran them "
                "as an unprivileged user): `ddpmlab team backup`, a new stack and `team restore` move everything"
            )
        if self.public_names and self.public_names != self.state.get("public_names"):
            if self._running("mlflow"):
                raise TeamStackError("MLflow runs: stop it (`ddpmlab team down --service mlflow`) to change its public names")
            self.state["public_names"] = self.public_names
        experiments = list(experiments)
        if not all(isinstance(e, str) and e.strip() for e in experiments):
            raise ValueError(f"experiment names must be non-empty: {experiments!r}")
        if all(self._running(name) for name in SERVICES):
            log.info("team stack in %s is running already: nothing to do", self.state_dir)
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pg = self._postgres()
        if not (self.state_dir / "secrets.json").is_file() and pg.initialised():
            raise TeamStackError(
                f"the PostgreSQL cluster {pg.data_dir} exists, but {self.state_dir} has no secrets.json (a deleted state "
                f"folder?): restore the folder, or delete the cluster (rm -r {pg.data_dir}) to start afresh"
            )
        for name in SERVICES:  # all taken ports named before anything starts
            if not self._running(name):
                self._check_ports(name)
        make_private_dir(self.service_dir, self.account)
        self._check_python()  # and a Python the services cannot run
        self._secrets(create=True)
        self._save()
        previous = self.auth_config.read_text() if self.auth_config.is_file() else None
        if not self._running("mlflow"):
            self._write_auth_config(admin_password)
        started = []
        try:
            for name in SERVICES:
                if not self._running(name):
                    self.start_service(name, timeout_s)
                    started.append(name)
            try:
                with self.trusted():
                    accounts.check_admin(self.tracking_uri, admin_password)
                    for name in experiments:
                        accounts.ensure_experiment(self.tracking_uri, admin_password, name)
                        accounts.ensure_registered_model(self.tracking_uri, admin_password, name)  # where its runs register models
            except accounts.AccountError as e:
                if previous is not None:  # a wrong password: keep the ini holding the admin's real one
                    write_private(self.auth_config, previous, self.account)
                raise TeamStackError(f"{e} (the admin's password is the one of the first `up` of {self.state_dir})") from e
        except BaseException:
            for name in reversed(started):
                try:
                    self.stop_service(name)
                except (TeamStackError, OSError, subprocess.SubprocessError) as e:  # report the original failure, not this one
                    log.warning("team stack: could not stop %s: %s", name, e)
            raise
        return True

    def down(self) -> None:
        """Stop MLflow, then the object store, then PostgreSQL (pg_ctl stop -m fast)."""
        errors = []
        for name in reversed(SERVICES):
            try:
                self.stop_service(name)
            except (TeamStackError, OSError, subprocess.SubprocessError) as e:  # still stop the others
                errors.append(f"{name}: {e}")
        if errors:
            raise TeamStackError("; ".join(errors))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per service: running, pid, port and url."""
        ports = self.state["ports"]
        pg = self._postgres()
        urls = {"postgres": pg.uri("mlflow"), "object_store": self.s3_endpoint, "mlflow": self.tracking_uri}
        port = {"postgres": ports["postgres"], "object_store": ports.get("s3_public", ports["s3"]), "mlflow": ports["mlflow"]}
        out = {}
        for name in SERVICES:
            running = self._running(name)
            pid = (pg.pid() if name == "postgres" else self._pid(name)[0]) if running else None
            out[name] = {"running": running, "pid": pid, "port": port[name], "url": urls[name]}
        return out

    def pids(self) -> dict[str, list[int]]:
        """Every live process of each service (MLflow's workers, PostgreSQL's backends included)."""
        out = {"postgres": self._postgres().processes()}
        for name, process in (("object_store", "object_store"), ("object_store", GATEWAY), ("mlflow", "mlflow")):
            pid, ticks = self._pid(process)
            reused = pid is not None and alive(pid) and not alive(pid, ticks)  # then the group is someone else's
            out.setdefault(name, []).extend(group_members(pid) if pid and not reused else [])  # workers may outlive their leader
        return out

    def destroy(self) -> None:
        """down(), then delete the state folder and the PostgreSQL cluster: every run, artifact and login."""
        try:
            self.down()
        finally:
            self._postgres().remove()
            shutil.rmtree(self.service_dir, ignore_errors=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)
