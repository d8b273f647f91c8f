"""PostgreSQL for the team stack: one cluster of Debian's server binaries, MLflow's tracking store
(database ``mlflow``) and login store (``mlflow_auth``).

Two roles, each with a generated password (scram-sha-256): the bootstrap superuser ``ddpmlab``,
which only the stack itself uses (to create the role and the databases), and ``mlflow``, which
owns both databases and is nothing more (no superuser, no CREATEDB, no CREATEROLE), so a hole in
MLflow's use of its database cannot become a shell on the host (``COPY ... FROM PROGRAM`` needs
a superuser). MLflow reads only its own role's password, from a passfile of its own. No URI or
command line carries a password: libpq reads them from passfiles (0600) named by PGPASSFILE.
A cluster made before the split has ``mlflow`` as its bootstrap superuser (which cannot be
demoted); it keeps working, and the stack warns at each start that it should be moved (a
`team backup` restored into a new stack lands on the split roles).

initdb and pg_ctl refuse to run as root; as root they run as the ``postgres`` user (runuser),
and the cluster lives where that user can reach it, under /var/lib/postgresql/ddpmlab/."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ddpmlab.team.processes import TeamStackError, alive, as_root, child_env, descendants, log_tail, start_ticks, write_private

SUPERUSER, SERVICE_ROLE = "ddpmlab", "mlflow"
LEGACY_SUPERUSER = "mlflow"  # clusters made before the split: MLflow's role is their bootstrap superuser
DATABASES = ("mlflow", "mlflow_auth")  # tracking store, login store
ROOT_CLUSTERS = Path("/var/lib/postgresql/ddpmlab")
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; the socket file is "<dir>/.s.PGSQL.<port>"
HBA = """\
# ddpmlab team stack: its two roles only, each with its password, from this machine only
local  all  {roles}             scram-sha-256
host   all  {roles}  samehost   scram-sha-256
"""


DEBIAN_SERVERS = Path("/usr/lib/postgresql")


def bin_dir(data_dir: Path | None = None) -> Path:
    """Debian's PostgreSQL server binaries for the cluster in ``data_dir``: those of the major
    version in its PG_VERSION (a server of another major cannot open it, so installing a newer
    one must not move an existing cluster to it); for a new cluster, the newest installed."""
    version_file = data_dir / "PG_VERSION" if data_dir is not None else None
    if version_file is not None and version_file.is_file():
        major = version_file.read_text().strip()
        binaries = DEBIAN_SERVERS / major / "bin"
        if not (binaries / "pg_ctl").is_file():
            raise TeamStackError(
                f"the cluster in {data_dir} is PostgreSQL {major}, whose server is not installed ({binaries}): "
                f"`apt-get install postgresql-{major}`, or upgrade the cluster with pg_upgradecluster"
            )
        return binaries

    def version(initdb: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", initdb.parent.parent.name))

    found = sorted(DEBIAN_SERVERS.glob("*/bin/initdb"), key=version)
    if not found:
        raise TeamStackError(f"no PostgreSQL server ({DEBIAN_SERVERS}/*/bin/initdb): install it (`apt-get install postgresql`)")
    return found[-1].parent


def cluster_dir(state_dir: Path) -> Path:
    """Where the cluster of the stack in ``state_dir`` lives: <state_dir>/postgres, or as root a
    postgres-owned folder named by a hash of the state dir (pytest's and many other folders of
    root are closed to other users)."""
    if not as_root():
        return state_dir / "postgres"
    return ROOT_CLUSTERS / hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def _owner() -> pwd.struct_passwd | None:
    """The account the server runs as when this process is root (else None: the current user)."""
    if not as_root():
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise TeamStackError(
            "as root, PostgreSQL runs as user `postgres`, and there is none: `apt-get install postgresql`"
        ) from None


@dataclass
class Postgres:
    """The cluster in ``data_dir``, on ``host``:``port``; ``passfile`` holds both roles' passwords (the
    stack's), ``service_passfile`` MLflow's role's alone; ``log`` gets the server's output."""

    data_dir: Path
    host: str
    port: int
    passfile: Path
    service_passfile: Path
    log: Path
    superuser: str = SUPERUSER

    @property
    def legacy(self) -> bool:
        """A cluster from before the split: MLflow's role is the superuser."""
        return self.superuser == SERVICE_ROLE

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(bin_dir(self.data_dir) / tool), *args]
        return ["runuser", "-u", "postgres", "--", *command] if _owner() else command

    def _run(self, tool: str, *args: str, timeout_s: float = 120) -> None:
        """Run an initdb / pg_ctl command with its output appended to the log; fail with the log's end."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # cwd "/": as the postgres user, the caller's folder may be closed to it.
            # start_new_session: the postmaster that pg_ctl starts stays in it, away from the terminal's Ctrl-C.
            code = subprocess.call(
                self._command(tool, *args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                start_new_session=True, timeout=timeout_s, env=child_env(),
            )  # fmt: skip
        if code != 0:
            tail = log_tail(self.log)
            raise TeamStackError(f"PostgreSQL: `{tool} {args[0]}` failed (exit status {code}); the end of {self.log}:\n{tail}")

    def version(self) -> str:
        """The cluster's major version (its PG_VERSION)."""
        return (self.data_dir / "PG_VERSION").read_text().strip()

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self, password: str) -> None:
        """Create the cluster: bootstrap superuser ``self.superuser`` with ``password``, scram-sha-256 everywhere."""
        owner = _owner()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pwfile"  # outside the data dir: initdb wants it empty
        write_private(pwfile, password + "\n")
        if owner:
            for path in (ROOT_CLUSTERS, self.data_dir, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            os.chmod(ROOT_CLUSTERS, 0o700)
        try:
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.superuser, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "--encoding=UTF8", "--no-locale", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        self.write_hba()

    def write_hba(self) -> None:
        roles = ",".join(sorted({self.superuser, SERVICE_ROLE}))
        (self.data_dir / "pg_hba.conf").write_text(HBA.format(roles=roles))  # written in place: it keeps its owner

    def write_passfiles(self, superuser_password: str, service_password: str, service_owner=None) -> None:
        """The libpq passfiles (PGPASSFILE): both roles' for the stack, MLflow's role's alone for
        MLflow (owned by ``service_owner``, the account MLflow runs as). Any host, since URIs may
        name it differently."""
        service = f"*:{self.port}:*:{SERVICE_ROLE}:{service_password}\n"
        if self.legacy:
            service = f"*:{self.port}:*:{SERVICE_ROLE}:{superuser_password}\n"
            write_private(self.passfile, service)
        else:
            write_private(self.passfile, f"*:{self.port}:*:{self.superuser}:{superuser_password}\n" + service)
        write_private(self.service_passfile, service, service_owner)

    def _socket_dir(self) -> str:
        # A too long path cannot hold a Unix socket: TCP only then ('' disables the sockets).
        return str(self.data_dir) if len(f"{self.data_dir}/.s.PGSQL.{self.port}") <= SOCKET_PATH_MAX else ""

    def start(self, timeout_s: float) -> None:
        """pg_ctl start, waiting until the server accepts connections."""
        options = [f"listen_addresses={self.host}", f"port={self.port}", f"unix_socket_directories={self._socket_dir()}"]
        # pg_ctl hands -o to a shell; without -l the postmaster writes to pg_ctl's output, our log.
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", str(int(timeout_s)),
                  "-o", " ".join(f"-c {shlex.quote(o)}" for o in options), timeout_s=timeout_s + 30)  # fmt: skip

    def stop(self, timeout_s: float = 60) -> None:
        """pg_ctl stop -m fast: ends the sessions (MLflow's pooled connections), checkpoints, exits."""
        if self.pid() is not None:
            wait = ["-w", "-t", str(int(timeout_s))]
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", *wait, timeout_s=timeout_s + 30)

    def pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid), None when it does not run."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def ticks(self) -> int | None:
        pid = self.pid()
        return start_ticks(pid) if pid else None

    def processes(self) -> list[int]:
        pid = self.pid()
        return descendants(pid) if pid else []

    def connect(self, database: str = "postgres"):
        try:
            import psycopg2
        except ImportError:
            raise TeamStackError("psycopg2 is missing: pip install 'ddpmlab[team]'") from None
        login = {"user": self.superuser, "passfile": str(self.passfile)}
        return psycopg2.connect(host=self.host, port=self.port, dbname=database, connect_timeout=5, **login)

    def healthy(self) -> bool:
        """Whether the server accepts a login with the passfile; a refused password fails at once."""
        import psycopg2

        try:
            conn = self.connect()
        except psycopg2.OperationalError as e:
            if "password authentication failed" in str(e):
                why = f"PostgreSQL in {self.data_dir} refuses the password in {self.passfile}"
                raise TeamStackError(f"{why}: was the cluster made for another state folder?") from e
            return False  # not listening yet
        conn.close()
        return True

    def create_databases(self, service_password: str) -> None:
        """MLflow's role (LOGIN and nothing more; its password set to ``service_password``) and
        the databases it owns; what exists is left, its owner and the role's password made right."""
        from psycopg2 import sql

        conn = self.connect()
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        role = sql.Identifier(SERVICE_ROLE)
        try:
            with conn.cursor() as cur:
                if not self.legacy:
                    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (SERVICE_ROLE,))
                    verb = "ALTER" if cur.fetchone() else "CREATE"
                    # The password goes as a bound parameter, not in a command line; the server logs no statements.
                    cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(role),
                                (service_password,))  # fmt: skip
                for name in DATABASES:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), role))
                    else:
                        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), role))
        finally:
            conn.close()

    def _client(self, tool: str, *args: str, timeout_s: float = 3600) -> None:
        """Run pg_dump / pg_restore of the cluster's version against it as the superuser (password
        from the passfile, never the command line); fail with the tool's own message."""
        command = [str(bin_dir(self.data_dir) / tool), "-h", self.host, "-p", str(self.port), "-U", self.superuser, *args]
        done = subprocess.run(command, env=child_env({"PGPASSFILE": str(self.passfile)}), capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
        if done.returncode != 0:
            raise TeamStackError(f"PostgreSQL: `{tool}` failed (exit status {done.returncode}): {done.stderr.strip()[-1000:]}")

    def dump(self, database: str, path: Path) -> None:
        """``database`` to ``path`` in pg_dump's custom format, without owners (restore gives them)."""
        self._client("pg_dump", "--format=custom", "--no-owner", f"--file={path}", database)

    def restore(self, database: str, path: Path) -> None:
        """Replace ``database``'s contents with the dump at ``path``, every object owned by MLflow's role."""
        self._client("pg_restore", "--clean", "--if-exists", "--no-owner", f"--role={SERVICE_ROLE}", "--single-transaction",
                     f"--dbname={database}", str(path))  # fmt: skip

    def uri(self, database: str) -> str:
        """SQLAlchemy URI without password (libpq takes it from PGPASSFILE). The driver is named:
        SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the team extra does not install."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql+psycopg2://{SERVICE_ROLE}@{host}:{self.port}/{database}"

    def remove(self) -> None:
        """Delete the cluster's files (the server must be stopped)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
