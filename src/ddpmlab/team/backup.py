"""`ddpmlab team backup` and `ddpmlab team restore`: everything a team stack holds, in one folder.

A backup folder (0700, every file 0600: it holds people's S3 keys and the logins' hashes)::

    manifest.json         what is in it: counts and bytes per bucket, the PostgreSQL version, when
    mlflow.dump           the tracking store (runs, params, metrics, tags, models), pg_dump custom format
    mlflow_auth.dump      the login store (users, password hashes, permissions)
    people.json           each person's key to the dvc bucket (restored with the same keys)
    buckets/<bucket>/...  every object of mlflow-artifacts (run artifacts) and dvc (DVC's cache)

A restore goes into a running stack, usually a new one: MLflow is stopped meanwhile, the two
databases are replaced (their objects then owned by MLflow's role, so a backup of a stack from
before the split of roles moves it onto a role without superuser rights), the objects are
uploaded and people's keys put back. Logins come back with their passwords, the admin's
included: after a restore the admin's password is the backed-up stack's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path, PurePosixPath

from ddpmlab.team.object_store import BUCKETS
from ddpmlab.team.postgres import DATABASES
from ddpmlab.team.processes import TeamStackError, write_private

MANIFEST = "manifest.json"


def _object_path(root: Path, key: str) -> Path:
    """Where object ``key`` goes under ``root``; a key that would leave it is refused."""
    parts = PurePosixPath(key).parts
    if not parts or any(part in ("..", "") for part in parts) or key.startswith("/"):
        raise TeamStackError(f"object key {key!r} cannot be saved as a file below {root}")
    return root.joinpath(*parts)


def _require(stack, *services: str) -> None:
    stopped = [name for name in services if not stack.status()[name]["running"]]
    if stopped:
        raise TeamStackError(f"{', '.join(stopped)} of the stack in {stack.state_dir} is stopped: `ddpmlab team start` first")


def backup(stack, folder: Path, progress=lambda message: None) -> dict:
    """Write the stack's databases, buckets and people's keys to the new folder ``folder``; returns the manifest."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise TeamStackError(f"{folder} exists and is not empty: a backup goes into a new folder")
    _require(stack, "postgres", "object_store")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    pg, store = stack._postgres(), stack._store()
    manifest: dict = {"made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "postgres_version": pg.version(),
                      "databases": list(DATABASES), "buckets": {}}  # fmt: skip
    for database in DATABASES:
        progress(f"database {database}")
        pg.dump(database, folder / f"{database}.dump")
        (folder / f"{database}.dump").chmod(0o600)
    people = store.people()
    write_private(folder / "people.json", json.dumps(people, indent=2) + "\n")
    manifest["people"] = len(people)
    client = store.client()
    for bucket in BUCKETS:
        count = size = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                target = _object_path(folder / "buckets" / bucket, item["Key"])
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                client.download_file(bucket, item["Key"], str(target))
                target.chmod(0o600)
                count, size = count + 1, size + item["Size"]
        manifest["buckets"][bucket] = {"objects": count, "bytes": size}
        progress(f"bucket {bucket}: {count} objects, {size / 2**20:.1f} MiB")
    write_private(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: a folder without it is incomplete
    return manifest


def restore(stack, folder: Path, progress=lambda message: None, timeout_s: float = 180) -> dict:
    """Put the backup in ``folder`` into the running ``stack`` (replacing its databases' contents and
    adding the objects and keys); returns the backup's manifest."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise TeamStackError(f"{folder} has no {MANIFEST}: not a backup, or one that did not finish") from None
    missing = [f"{database}.dump" for database in manifest["databases"] if not (folder / f"{database}.dump").is_file()]
    if missing:
        raise TeamStackError(f"the backup in {folder} lacks {', '.join(missing)}")
    _require(stack, "postgres", "object_store")
    pg, store = stack._postgres(), stack._store()
    stack.stop_service("mlflow")  # nothing may write while its databases are replaced
    for database in manifest["databases"]:
        progress(f"database {database}")
        pg.restore(database, folder / f"{database}.dump")
    client = store.client()
    for bucket in manifest["buckets"]:
        root = folder / "buckets" / bucket
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in files:
            client.upload_file(str(path), bucket, path.relative_to(root).as_posix())
        expected = manifest["buckets"][bucket]["objects"]
        if len(files) != expected:
            raise TeamStackError(f"the backup in {folder} holds {len(files)} objects of bucket {bucket}, its manifest {expected}")
        progress(f"bucket {bucket}: {len(files)} objects")
    for identity in json.loads((folder / "people.json").read_text()):
        store.restore_person(identity)
    stack.start_service("mlflow", timeout_s)
    return manifest
