"""A person's key to the stack's DVC bucket, as a file: what `ddpmlab team user` hands out and
`ddpmlab team dvc-remote` points a repository at. It is an AWS shared-credentials file (one
profile, PROFILE), so DVC's S3 client reads it itself (`credentialpath` + `profile` in
.dvc/config.local) and the secret never goes through a command line or into DVC's config.
The profile also names the store's endpoint and bucket (keys botocore ignores), so a client
needs this one file and nothing of the stack's state folder."""

from __future__ import annotations

import configparser
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ddpmlab.team.processes import write_private

PROFILE = "ddpmlab-team"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # an MLflow login and a SeaweedFS identity alike


class CredentialsError(ValueError):
    """A credentials file that cannot be used: missing, malformed, or readable by others."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise ValueError(f"user name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class BucketKey:
    """An S3 key pair for one bucket of the store at ``endpoint``; ``write``: may put and delete."""

    access_key: str
    secret_key: str = field(repr=False)
    endpoint: str = ""
    bucket: str = ""
    write: bool = False

    def text(self, owner: str) -> str:
        mode = "read-write" if self.write else "read-only"
        return (
            f"# ddpmlab team: {owner}'s {mode} key to s3://{self.bucket} at {self.endpoint}.\n"
            "# Keep it private (chmod 600); `ddpmlab team dvc-remote --credentials <this file>` uses it.\n"
            f"[{PROFILE}]\n"
            f"aws_access_key_id = {self.access_key}\n"
            f"aws_secret_access_key = {self.secret_key}\n"
            f"ddpmlab_endpoint_url = {self.endpoint}\n"
            f"ddpmlab_bucket = {self.bucket}\n"
            f"ddpmlab_write = {str(self.write).lower()}\n"
        )

    def save(self, path: Path, owner: str) -> None:
        write_private(path, self.text(owner))


def load(path: Path) -> BucketKey:
    """The key in ``path``; CredentialsError when the file is missing, malformed, or open to others
    (as ssh refuses a private key that is: anyone who can read it can use the key)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CredentialsError(f"no credentials file {path}: `ddpmlab team user NAME` writes one for each person") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
        section = parser[PROFILE]
        return BucketKey(
            section["aws_access_key_id"], section["aws_secret_access_key"], section["ddpmlab_endpoint_url"],
            section["ddpmlab_bucket"], section.get("ddpmlab_write", "false") == "true",
        )  # fmt: skip
    except (configparser.Error, KeyError) as e:
        raise CredentialsError(f"{path} is not a ddpmlab team credentials file (profile [{PROFILE}] with its keys): {e}") from None
