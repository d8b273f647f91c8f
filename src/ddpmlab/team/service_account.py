"""Who the object store and MLflow run as.

Started by a normal user, they run as that user, their files in the state folder. Started as
root, they run as ``ddpmlab``, a system account with no login and no home (created on the
first `team up` when missing), so that a hole in MLflow or SeaweedFS gives a stranger that
account and not the machine. Its files (the store's data, MLflow's login settings and database
passfile, the TLS copies) then live in a folder of its own, /var/lib/ddpmlab/<hash of the state
folder>, 0700: root's own folders (pytest's among them) are closed to it. PostgreSQL runs as
``postgres`` already (:mod:`ddpmlab.team.postgres`).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ddpmlab.team.processes import TeamStackError, as_root

SERVICE_USER = "ddpmlab"
ROOT_SERVICE_DIRS = Path("/var/lib/ddpmlab")


@dataclass(frozen=True)
class Account:
    """An account processes run as: ``name``, ``uid``, ``gid`` (its primary group, its only one)."""

    name: str
    uid: int
    gid: int


def service_account(create: bool = False) -> Account | None:
    """The account the services run as when this process is root (None otherwise: the current user).
    ``create``: add it as a system account (no login shell, no home) when missing."""
    if not as_root():
        return None
    try:
        found = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        if not create:
            raise TeamStackError(f"as root, the team stack's services run as user {SERVICE_USER!r}, and there is none: "
                                 "`ddpmlab team up` creates it") from None  # fmt: skip
        _create_system_user(SERVICE_USER)
        found = pwd.getpwnam(SERVICE_USER)
    if found.pw_uid == 0:
        raise TeamStackError(f"user {SERVICE_USER!r} has uid 0: the services would run as root; give it its own uid")
    return Account(found.pw_name, found.pw_uid, found.pw_gid)


def _create_system_user(name: str) -> None:
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin", "--comment", "ddpmlab team stack services", name]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise TeamStackError(f"`useradd` is missing: create a system user {name!r} by hand (it runs the stack's services)") from None
    if done.returncode != 0:
        raise TeamStackError(f"`useradd {name}` failed: {done.stderr.strip()}")


def service_dir(state_dir: Path) -> Path:
    """The folder of the services' own files: the state folder, or as root one of the service account's."""
    if not as_root():
        return state_dir
    return ROOT_SERVICE_DIRS / hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def make_private_dir(path: Path, owner: Account | None) -> None:
    """``path`` (and its parents) as a folder that only ``owner`` (default: this process's user) can open."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def blocked_by(path: Path, account: Account, execute: bool = False) -> Path | None:
    """The first folder on the way to ``path`` that ``account`` cannot pass, or ``path`` itself when it
    cannot read it (or run it, with ``execute``); None when it can. Read from the mode bits, as the
    kernel decides for a process with that uid and primary group alone (ACLs aside)."""
    groups = {account.gid}
    path = Path(os.path.abspath(path))
    for folder in reversed(path.parents):
        if not _allowed(folder.stat(), account.uid, groups, stat.S_IXUSR):
            return folder
    wanted = stat.S_IRUSR | (stat.S_IXUSR if execute else 0)
    return None if _allowed(path.stat(), account.uid, groups, wanted) else path


def _allowed(info: os.stat_result, uid: int, groups: set[int], owner_bits: int) -> bool:
    """Whether mode bits ``owner_bits`` (given as the owner's: S_IRUSR, S_IXUSR) hold for this uid."""
    if info.st_uid == uid:
        shift = 0
    elif info.st_gid in groups:
        shift = 3
    else:
        shift = 6
    return info.st_mode & (owner_bits >> shift) == owner_bits >> shift
