"""A write-ahead journal of MLflow records, so a tracking server that is down, restarting or slow
never stalls or kills a stage and nothing logged is lost.

A stage appends every record (run start, params / metrics / tags, artifact, run end) to its own
journal file before anything is sent; ``pipeline.outbox`` sends the records in order and notes
how many went. A journal whose process ended before everything went (a crash, or a server down
past the stage's wait) stays on disk and is sent by the next stage or ``ddpmlab tracking sync``.
This module only reads and writes the files; it imports no MLflow.

Layout of the folder (``<project>/.ddpmlab/journal`` by default)::

    <stamp>-<pid>.jsonl    one JSON record a line; the first is {"op": "open", "uri": ...}
    <stamp>-<pid>.sent     how many records of it the server has (replaced atomically)
    <stamp>-<pid>.files/   hard links (or copies) of the files logged as artifacts, so a later
                           stage rewriting its outputs cannot change what is sent
    run_ids.json           pending run id -> the server's run id

A run started while the server is down gets a pending id ("pending-<32 hex>") that later records,
and later stages (through train.json), use until the server assigns the real one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PENDING_PREFIX = "pending-"
# The tag every experiment ddpmlab creates gets (whoever creates it: a stage, the outbox, the team
# stack's admin): MLflow 3's UI opens an experiment without it in its GenAI (traces) view, where
# training runs, their params and metric charts are hidden; this kind opens "Model training".
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def new_pending_id() -> str:
    return PENDING_PREFIX + uuid.uuid4().hex


def is_pending(run_id: str | None) -> bool:
    return bool(run_id) and run_id.startswith(PENDING_PREFIX)


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


class Journal:
    """One journal file. The process that writes it holds an exclusive lock on it for as long as
    it lives, so no other process sends its records twice; a leftover is locked by whoever sends it."""

    def __init__(self, path: Path, handle: Any = None) -> None:
        self.path = path
        self._handle = handle  # open for appending, and locked, by the writer

    @classmethod
    def create(cls, folder: Path, uri: str) -> Journal:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = folder / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open, and locked, for the writer's lifetime
        fcntl.flock(handle, fcntl.LOCK_EX)
        journal = cls(path, handle)
        journal.append({"op": "open", "uri": uri, "pid": os.getpid()})
        return journal

    @property
    def sent_path(self) -> Path:
        return self.path.with_suffix(".sent")

    @property
    def files(self) -> Path:
        return self.path.with_suffix(".files")

    def append(self, record: dict) -> None:
        """One line, flushed to the OS before returning: a crash of the process loses nothing."""
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()

    def keep_file(self, source: Path) -> Path:
        """A hard link to (or a copy of) ``source`` inside the journal, under its own name."""
        target = self.files / uuid.uuid4().hex[:12] / source.name
        target.parent.mkdir(parents=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(source, target)
        return target

    def records(self) -> list[dict]:
        """Every complete record; a line cut short by a crash mid-write is ignored."""
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
        return out

    def uri(self) -> str | None:
        records = self.records()
        return records[0].get("uri") if records and records[0].get("op") == "open" else None

    def sent(self) -> int:
        try:
            return int(self.sent_path.read_text())
        except (OSError, ValueError):
            return 1  # the "open" record needs no sending

    def mark_sent(self, count: int) -> None:
        _write_atomic(self.sent_path, str(count))

    def unsent(self) -> list[tuple[int, dict]]:
        """(index, record) of the records the server does not have yet."""
        records = self.records()
        return list(enumerate(records))[self.sent() :]

    def try_lock(self) -> bool:
        """Lock a leftover for sending; False while its writer, or another sender, holds it."""
        if self._handle is not None:
            return True
        handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - the lock lives as long as this handle
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # releases the lock
            self._handle = None

    def remove(self) -> None:
        """Everything sent: the journal and its files go."""
        shutil.rmtree(self.files, ignore_errors=True)
        self.sent_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self.close()


def journals(folder: Path, uri: str) -> Iterator[Journal]:
    """The journals in ``folder`` written for ``uri``, oldest first (records of one stage may refer
    to a run an earlier stage started)."""
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        journal = Journal(path)
        try:
            if journal.uri() == uri:
                yield journal
        except FileNotFoundError:
            continue  # sent and removed by another process meanwhile


class RunIds:
    """pending run id -> server run id, shared by every process of a project (in memory only
    without a folder: a local store, where runs are created at once)."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / "run_ids.json" if folder else None
        self._memory: dict[str, str] = {}

    def _read(self) -> dict[str, str]:
        if self.path is None:
            return self._memory
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, run_id: str) -> str | None:
        return self._read().get(run_id) if is_pending(run_id) else run_id

    def set(self, pending: str, real: str) -> None:
        if self.path is None:
            self._memory[pending] = real
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read-modify-write across processes
            _write_atomic(self.path, json.dumps({**self._read(), pending: real}, indent=0))
