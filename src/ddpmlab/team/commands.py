"""`ddpmlab team`: start, inspect and stop the team stack, add accounts, and point a DVC
repository at the stack's bucket. Heavy imports stay inside the commands: the CLI starts light."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

TEAM_ADMIN_PASSWORD_ENV = "DDPMLAB_TEAM_ADMIN_PASSWORD"
TEAM_USER_PASSWORD_ENV = "DDPMLAB_TEAM_USER_PASSWORD"
TEAM_SERVICES = ("postgres", "object_store", "mlflow")  # ddpmlab.team.SERVICES, not imported here: the CLI starts light
PROJECT_MARKERS = ("dvc.yaml", ".dvc", ".git")


def team_dir(given: Path | None) -> Path:
    """--dir, else .team in the project root: the nearest folder up with dvc.yaml, .dvc or .git
    (else the current one), so every command finds the same stack from any subfolder."""
    if given is not None:
        return given
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder / ".team"
    return here / ".team"


def admin_password() -> str:
    password = os.environ.get(TEAM_ADMIN_PASSWORD_ENV)
    if not password:
        raise click.ClickException(f"{TEAM_ADMIN_PASSWORD_ENV} is not set: export the MLflow admin's password (12+ characters)")
    return password


@contextmanager
def team_errors() -> Iterator[None]:
    """A stack or account failure as a one-line (or log-tail) error, not a traceback."""
    from ddpmlab.team.accounts import AccountError
    from ddpmlab.team.processes import TeamStackError

    try:
        yield
    except (TeamStackError, AccountError, ValueError) as e:
        raise click.ClickException(str(e)) from e


team_dir_option = click.option(
    "--dir", "state_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
    help="The stack's state folder: state, secrets, logs, data [default: .team in the project root, git-ignored].",
)  # fmt: skip
service_option = click.option("--service", type=click.Choice(TEAM_SERVICES), help="Only this service [default: all].")
team_timeout_option = click.option(
    "--timeout", "timeout_s", default=180, show_default=True, type=click.IntRange(10), help="Seconds a service may take to start."
)


@click.group(
    "team",
    help="""A team tracking stack on this machine: PostgreSQL (MLflow's runs and logins), SeaweedFS
(S3 for artifacts and a DVC remote) and an MLflow server that wants a login.

\b
  ddpmlab team up          start it; the admin's password comes from $DDPMLAB_TEAM_ADMIN_PASSWORD
  ddpmlab team status      what runs, with pids and addresses
  ddpmlab team user NAME   a login with READ, EDIT or MANAGE on an experiment, and a DVC key
  ddpmlab team revoke NAME delete that login and that key
  ddpmlab team dvc-remote  make the stack's S3 bucket a DVC repository's default remote
  ddpmlab team backup      databases, buckets and keys to a folder; `team restore` puts them back
  ddpmlab team down        stop it, or one --service; `ddpmlab team start` starts again

By default every service listens on 127.0.0.1 only. Other machines reach MLflow and S3 either
in TLS on --host with --tls-cert/--tls-key, or through a TLS reverse proxy (docs/team.md);
PostgreSQL and the store's internal ports stay on 127.0.0.1 either way. As root, MLflow and the
store run as the unprivileged user `ddpmlab`. Needs pip install 'ddpmlab[team]' and Debian's
PostgreSQL server (apt-get install postgresql)."""
)
def team() -> None:
    pass


@team.command("up", short_help="Start the stack; the admin's password from $DDPMLAB_TEAM_ADMIN_PASSWORD.")
@team_dir_option
@click.option("--host", default=None,
              help="Address MLflow and S3 listen on [default: the stack's, else 127.0.0.1]. One other machines reach "
                   "needs --tls-cert and --tls-key (or keep 127.0.0.1 behind a TLS reverse proxy, docs/team.md).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM certificate naming --host (its subjectAltName): MLflow and S3 then speak TLS only. "
                   "Re-read at each start.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The certificate's private key (PEM); the services read a 0600 copy.")
@click.option("--service-python", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              envvar="DDPMLAB_TEAM_SERVICE_PYTHON", show_envvar=True,
              help="The Python that runs MLflow's server [default: this one]. As root the services run as user "
                   "`ddpmlab`: give a Python with ddpmlab[team] it can run when this one is closed to it.")  # fmt: skip
@click.option("--public-name", "public_names", multiple=True,
              help="A name a reverse proxy in front forwards as Host (e.g. mlflow.example.org): MLflow answers it "
                   "(repeat for several; MLflow restarts to take a change).")  # fmt: skip
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="MLflow's port [default: the stack's, else 5000].")
@click.option("--experiment", "experiments", multiple=True, default=("ddpmlab",), show_default=True,
              help="An experiment the admin creates if missing (repeat for several).")  # fmt: skip
@team_timeout_option
def team_up(state_dir: Path | None, host: str | None, tls_cert: Path | None, tls_key: Path | None, service_python: Path | None,
            port: int | None, public_names: tuple[str, ...], experiments: tuple[str, ...], timeout_s: int) -> None:  # fmt: skip
    """Start PostgreSQL, the object store and `mlflow server --app-name basic-auth`, in that order
    (what runs already is left alone), then create the experiments as the admin. The first `up` of
    a folder picks free ports, generates every internal secret and makes the admin with the
    password in $DDPMLAB_TEAM_ADMIN_PASSWORD (12+ characters; later ups must give the same one).
    On a failure, what was started is stopped again and the failing service's log is shown."""
    from ddpmlab.team.stack import TeamStack

    folder = team_dir(state_dir)
    password = admin_password()
    with team_errors():
        given = {"tls_cert": tls_cert, "tls_key": tls_key, "service_python": service_python}
        if (folder / "state.json").is_file():
            stack = TeamStack(folder, host or TeamStack.load(folder).host, port or 0, **given)
        else:
            stack = TeamStack(folder, host or "127.0.0.1", port or 5000, **given)
        stack.public_names = list(public_names)
        started = stack.up(password, experiments, timeout_s)
    click.echo(f"team stack in {stack.state_dir} {'is up' if started else 'was running already: nothing done'}")
    echo_status(stack.status())
    click.echo(
        f"experiments: {', '.join(experiments)}\n"
        "A client of this server (a stage, dvc exp run, ddpmlab compare) sets:\n"
        f"  export MLFLOW_TRACKING_URI={stack.tracking_uri}\n"
        "  export MLFLOW_TRACKING_USERNAME=<user>        # admin, or one made with `ddpmlab team user`\n"
        "  export MLFLOW_TRACKING_PASSWORD=<that user's password>"
    )
    if stack.tls:
        click.echo(f"  export MLFLOW_TRACKING_SERVER_CERT_PATH=<a copy of {stack.trust_bundle}>   # verifies the server")


def echo_status(status: dict) -> None:
    for name, info in status.items():
        state = f"running (pid {info['pid']})" if info["running"] else "stopped"
        click.echo(f"  {name:<13} {state:<22} {info['url']}")


@team.command("status", short_help="Each service: running or stopped, pid, address.")
@team_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def team_status(state_dir: Path | None, as_json: bool) -> None:
    """Each service of the stack: running or stopped, pid, address. Exits with status 3 when
    something is stopped (a script can wait on it)."""
    import json

    from ddpmlab.team.stack import TeamStack

    with team_errors():
        status = TeamStack.load(team_dir(state_dir)).status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        echo_status(status)
    if not all(info["running"] for info in status.values()):
        raise SystemExit(3)


@team.command("down", short_help="Stop the stack, or one --service.")
@team_dir_option
@service_option
def team_down(state_dir: Path | None, service: str | None) -> None:
    """Stop the stack (MLflow, the object store, then PostgreSQL with pg_ctl stop -m fast), or one
    --service for maintenance. Data, logins and secrets stay: `ddpmlab team up` or `start` resume."""
    from ddpmlab.team.stack import TeamStack

    with team_errors():
        stack = TeamStack.load(team_dir(state_dir))
        if service:
            stack.stop_service(service)
        else:
            stack.down()
    click.echo(f"stopped {service or 'the team stack'} ({stack.state_dir})")


@team.command("start", short_help="Start stopped services again.")
@team_dir_option
@service_option
@team_timeout_option
def team_start(state_dir: Path | None, service: str | None, timeout_s: int) -> None:
    """Start one stopped --service again (or every stopped one, in order) and wait until it
    answers. Needs a stack made by `ddpmlab team up`; no password is asked."""
    from ddpmlab.team.stack import TeamStack

    with team_errors():
        stack = TeamStack.load(team_dir(state_dir))
        for name in [service] if service else TEAM_SERVICES:
            stack.start_service(name, timeout_s)
    echo_status(stack.status())


DVC_ACCESS = ("read", "write", "none")


@team.command("user", short_help="A login with READ, EDIT or MANAGE on experiments, and a key to the DVC bucket.")
@click.argument("name")
@click.option("--permission", required=True, type=click.Choice(["read", "edit", "manage"], case_sensitive=False),
              help="read: see runs and models; edit: also log runs and register model versions; manage: also change permissions.")  # fmt: skip
@click.option("--experiment", "experiments", multiple=True, default=("ddpmlab",), show_default=True,
              help="Experiment the permission is on (repeat for several).")  # fmt: skip
@click.option("--dvc", "dvc_access", type=click.Choice(DVC_ACCESS), default=None,
              help="Their key to the dvc bucket: read (pull), write (pull and push) or none [default: write with "
                   "edit or manage, read with read].")  # fmt: skip
@click.option("--dvc-credentials", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write their DVC key (0600) [default: <state folder>/people/NAME.s3-credentials].")
@team_dir_option
def team_user(name: str, permission: str, experiments: tuple[str, ...], dvc_access: str | None, dvc_credentials: Path | None,
              state_dir: Path | None) -> None:  # fmt: skip
    """Create MLflow login NAME (if it does not exist) and give it --permission on each
    --experiment and on the registered model of the same name (where the train stage registers
    models by default), replacing what it had there. Then issue NAME a key of their own to the
    stack's dvc bucket (--dvc), scoped to that bucket alone, replacing any key they had, and
    write it to a 0600 file for you to hand to them; they point their clone at it with
    `ddpmlab team dvc-remote --credentials FILE`. The new login's password comes from
    $DDPMLAB_TEAM_USER_PASSWORD, else a hidden prompt (12+ characters); the admin's from
    $DDPMLAB_TEAM_ADMIN_PASSWORD. Without a permission of their own, users can read every
    experiment (the server's default is READ)."""
    from ddpmlab.team import accounts
    from ddpmlab.team.credentials import check_name
    from ddpmlab.team.stack import TeamStack, check_password

    admin = admin_password()
    with team_errors():
        check_name(name)
        stack = TeamStack.load(team_dir(state_dir))
        uri = stack.tracking_uri
        with stack.trusted():
            created = not accounts.user_exists(uri, admin, name)
            if created:
                password = os.environ.get(TEAM_USER_PASSWORD_ENV)
                password = password or click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
                accounts.create_user(uri, admin, name, check_password(password, f"the password of {name!r}"))
            for experiment in experiments:
                accounts.grant(uri, admin, name, experiment, permission)
        access = dvc_access or ("read" if permission.lower() == "read" else "write")
        key_file = None if access == "none" else stack.issue_dvc_key(name, access == "write", dvc_credentials)
    what = "created" if created else "exists (password unchanged)"
    click.echo(f"user {name!r} {what}: {permission.upper()} on {', '.join(experiments)} (each experiment and its registered model) at {uri}")
    if key_file is not None:
        click.echo(
            f"{access} key to s3://dvc for {name!r} in {key_file} (0600; any earlier key of theirs no longer works).\n"
            f"Hand it to them privately; they keep it 0600 and run: ddpmlab team dvc-remote --credentials <that file>"
        )


@team.command("revoke", short_help="Delete a login and its key to the DVC bucket.")
@click.argument("name")
@team_dir_option
def team_revoke(name: str, state_dir: Path | None) -> None:
    """Delete MLflow login NAME with its permissions, and NAME's key to the dvc bucket: both stop
    working at once (MLflow's login cache may accept the password for up to 30 s more). Their
    runs, models and pushed DVC objects stay. The admin's password from $DDPMLAB_TEAM_ADMIN_PASSWORD."""
    from ddpmlab.team import accounts
    from ddpmlab.team.credentials import check_name
    from ddpmlab.team.stack import TeamStack

    admin = admin_password()
    with team_errors():
        check_name(name)
        stack = TeamStack.load(team_dir(state_dir))
        with stack.trusted():
            had_login = accounts.delete_user(stack.tracking_uri, admin, name)
        stack.revoke_dvc_key(name)
    click.echo(f"{name!r}: {'login deleted' if had_login else 'had no login'}; key to s3://dvc revoked")


@team.command("dvc-remote", short_help="Make the stack's dvc bucket a DVC repository's default remote.")
@click.option("--credentials", "credentials_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Your key file from `ddpmlab team user` (0600; it names the store and bucket too).")  # fmt: skip
@click.option("--name", default="team", show_default=True, help="The remote's name; it becomes the default remote.")
@click.option("--repo", default=".", show_default=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The DVC repository.")  # fmt: skip
@click.option("--path", "prefix", default="ddpmlab", show_default=True,
              help="Folder in the stack's dvc bucket: keep it the same in every clone of a project.")  # fmt: skip
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CA bundle that verifies a TLS stack (the admin's copy of its tls-trust.pem); needed when its "
                   "certificate is self-signed.")  # fmt: skip
def team_dvc_remote(credentials_file: Path, name: str, repo: Path, prefix: str, ca_bundle: Path | None) -> None:
    """Make s3://dvc/<path> on the team's object store the default remote of the DVC repository
    --repo: URL and endpoint in .dvc/config (commit them); in .dvc/config.local (git-ignored,
    0600) only where your key file is and which profile of it to use. DVC reads the key from that
    file itself: the secret goes through no command line and into no DVC config. Keep the file
    where the clone's machine can read it (a job array's nodes: your home folder). Needs no
    state folder of the stack. Runs this environment's `dvc remote add/modify`."""
    from ddpmlab.team import credentials

    if not (repo / ".dvc").is_dir():
        raise click.ClickException(f"{repo} is not a DVC repository (no .dvc folder): run `dvc init` there first")
    credentials_file = credentials_file.expanduser().resolve()
    try:
        key = credentials.load(credentials_file)
    except credentials.CredentialsError as e:
        raise click.ClickException(str(e)) from e
    url = f"s3://{key.bucket}/{prefix.strip('/')}"
    steps = [
        ["remote", "add", "--default", "--force", name, url],
        ["remote", "modify", name, "endpointurl", key.endpoint],
        ["remote", "modify", "--local", name, "credentialpath", str(credentials_file)],
        ["remote", "modify", "--local", name, "profile", credentials.PROFILE],
    ]
    if ca_bundle is not None:
        steps.append(["remote", "modify", "--local", name, "ssl_verify", str(ca_bundle.expanduser().resolve())])
    for args in steps:
        # `python -m dvc`: this environment's dvc, with dvc-s3
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise click.ClickException(f"`dvc {' '.join(args)}` failed in {repo}: {(done.stderr or done.stdout).strip()}")
    (repo / ".dvc" / "config.local").chmod(0o600)  # it names where the key is: nobody else's business
    mode = "read-write" if key.write else "read-only"
    click.echo(f"DVC remote {name!r} (default) of {repo}: {url} at {key.endpoint}, {mode}, with the key in {credentials_file}")


@team.command("backup", short_help="Databases, both buckets and people's keys to a new folder.")
@click.option("--to", "folder", required=True, type=click.Path(file_okay=False, path_type=Path), help="A new (or empty) folder.")
@team_dir_option
def team_backup(folder: Path, state_dir: Path | None) -> None:
    """Write everything the stack holds to --to (0700; files 0600, since it holds logins' hashes and
    people's S3 keys): the tracking and login databases (pg_dump, custom format), every object of
    the mlflow-artifacts and dvc buckets, and each person's DVC key. MLflow keeps serving; a run
    logging meanwhile may be caught half-way (it is complete in the next backup)."""
    from ddpmlab.team.backup import backup
    from ddpmlab.team.stack import TeamStack

    with team_errors():
        manifest = backup(TeamStack.load(team_dir(state_dir)), folder, progress=lambda m: click.echo(f"  {m}", err=True))
    objects = ", ".join(f"{b}: {v['objects']} objects" for b, v in manifest["buckets"].items())
    click.echo(f"backed up to {folder}: databases {', '.join(manifest['databases'])}; {objects}; {manifest['people']} people's keys")


@team.command("restore", short_help="Put a backup into a running stack (usually a new one).")
@click.option("--from", "folder", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder written by `ddpmlab team backup`.")  # fmt: skip
@team_dir_option
@team_timeout_option
def team_restore(folder: Path, state_dir: Path | None, timeout_s: int) -> None:
    """Replace the running stack's databases with the backup's (MLflow is stopped meanwhile and
    started again), upload its objects and put back people's DVC keys, unchanged. Logins come back
    with their passwords: afterwards the admin's password is the backed-up stack's."""
    from ddpmlab.team.backup import restore
    from ddpmlab.team.stack import TeamStack

    with team_errors():
        stack = TeamStack.load(team_dir(state_dir))
        manifest = restore(stack, folder, progress=lambda m: click.echo(f"  {m}", err=True), timeout_s=timeout_s)
    click.echo(f"restored {folder} (made {manifest['made']}) into {stack.state_dir}; the admin's password is now the backed-up stack's")
