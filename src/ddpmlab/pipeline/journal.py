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
    <stamp>-<pid>.rejected records the server refused, each with its answer (set aside, not lost)
    run_ids.json           pending run id -> the server's run id ("refused": its creation was)
    servers.json           normalised URI -> the server's identity, learnt at the first contact

A run started while the server is down gets a pending id ("pending-<32 hex>") that later records,
and later stages (through train.json), use until the server assigns the real one. The run is
tagged with it too (PENDING_TAG), so a creation resent after a lost answer finds its run instead
of making a second one.

A journal belongs to a server, not to a spelling of its URI: ``http://h:5000/`` and
``http://H:5000`` are one (:func:`normalise_uri`), and so are two URIs that led to the same
server identity (servers.json), such as the old address and the https proxy put in front of it.

Journals are read incrementally (only the bytes appended since the last read), so a pass over a
long journal costs what is new, not its whole length. Writes are flushed at every record and
fsynced at checkpoints and at the stage's end (:meth:`Journal.sync`); a write that fails (a full
disk) raises :class:`JournalError` naming the file.
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
from urllib.parse import urlsplit, urlunsplit

PENDING_PREFIX = "pending-"
PENDING_TAG = "ddpmlab.pending_id"  # on every run created from a pending id: finds it again after a lost answer
REFUSED = "refused"  # run_ids.json's value for a pending run whose creation the server refused
DEFAULT_PORTS = {"http": 80, "https": 443}
# The tag every experiment ddpmlab creates gets (whoever creates it: a stage, the outbox, the team
# stack's admin): MLflow 3's UI opens an experiment without it in its GenAI (traces) view, where
# training runs, their params and metric charts are hidden; this kind opens "Model training".
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def new_pending_id() -> str:
    return PENDING_PREFIX + uuid.uuid4().hex


def is_pending(run_id: str | None) -> bool:
    return bool(run_id) and run_id.startswith(PENDING_PREFIX)


class JournalError(RuntimeError):
    """The journal cannot be written or read back as it must be (a full disk, a corrupt file)."""


def normalise_uri(uri: str) -> str:
    """One spelling per server: scheme and host lower-case, the scheme's default port and trailing
    slashes dropped (``HTTP://Host:80/`` -> ``http://host``). A non-URL (a file path) is kept."""
    parts = urlsplit(uri.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return uri
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port and parts.port != DEFAULT_PORTS[parts.scheme] else ""
    login = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{login}{host}{port}", parts.path.rstrip("/"), parts.query, ""))


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


class Journal:
    """One journal file. The process that writes it holds an exclusive lock on it for as long as
    it lives, so no other process sends its records twice; a leftover is locked by whoever sends it.
    Its records are parsed once: each read takes only the complete lines appended since the last."""

    def __init__(self, path: Path, handle: Any = None) -> None:
        self.path = path
        self._handle = handle  # open for appending, and locked, by the writer
        self._records: list[dict] = []
        self._offset = 0  # bytes of the file parsed into _records
        self._sent: int | None = None  # cached: only the process holding the lock changes it

    @classmethod
    def create(cls, folder: Path, uri: str) -> Journal:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = folder / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
        try:
            # Unbuffered: a write that fails (a full disk) leaves nothing in a buffer for a later flush to retry.
            handle = open(path, "ab", buffering=0)  # noqa: SIM115 - held open, and locked, for the writer's lifetime
        except OSError as e:
            raise JournalError(f"cannot create the tracking journal {path}: {e}") from e
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

    @property
    def rejected_path(self) -> Path:
        return self.path.with_suffix(".rejected")

    def append(self, record: dict) -> None:
        """One line, flushed to the OS before returning: a crash of the process loses nothing. A
        failed write (ENOSPC) raises JournalError; the line is then not in the journal."""
        line = memoryview((json.dumps(record, separators=(",", ":")) + "\n").encode())
        try:
            while line:  # a raw write may take only part of it
                line = line[self._handle.write(line) :]
        except OSError as e:
            raise JournalError(f"cannot write the tracking journal {self.path}: {e}") from e

    def sync(self) -> None:
        """Force what was appended onto the disk (os.fsync): a power loss after it loses nothing."""
        if self._handle is not None and not self._handle.closed:
            try:
                os.fsync(self._handle.fileno())
            except OSError as e:
                raise JournalError(f"cannot write the tracking journal {self.path}: {e}") from e

    def keep_file(self, source: Path) -> Path:
        """A hard link to (or a copy of) ``source`` inside the journal, under its own name."""
        target = self.files / uuid.uuid4().hex[:12] / source.name
        try:
            target.parent.mkdir(parents=True)
            try:
                os.link(source, target)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(source, target)
        except OSError as e:
            raise JournalError(f"cannot keep {source} in the tracking journal {self.files}: {e}") from e
        return target

    def records(self) -> list[dict]:
        """Every complete record; a line cut short by a crash mid-write is left for a later read
        (complete by then) or ignored. Reads only what was appended since the last call."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            new = f.read()
        end = new.rfind(b"\n") + 1
        for line in new[:end].splitlines():
            self._records.append(json.loads(line))
        self._offset += end
        return self._records

    def uri(self) -> str | None:
        """The URI of the first record (``open``), read from the first line alone."""
        with open(self.path, "rb") as f:
            first = f.readline()
        if not first.endswith(b"\n"):
            return None
        record = json.loads(first)
        return record.get("uri") if record.get("op") == "open" else None

    def sent(self) -> int:
        if self._sent is None:
            try:
                self._sent = int(self.sent_path.read_text())
            except (OSError, ValueError):
                self._sent = 1  # the "open" record needs no sending
        return self._sent

    def mark_sent(self, count: int) -> None:
        _write_atomic(self.sent_path, str(count))
        self._sent = count

    def unsent(self) -> list[tuple[int, dict]]:
        """(index, record) of the records the server does not have yet."""
        records, start = self.records(), self.sent()
        return list(enumerate(records[start:], start))

    def unsent_count(self) -> int:
        return max(len(self.records()) - self.sent(), 0)

    def set_aside(self, records: list[dict], error: str, uri: str) -> None:
        """Keep refused records beside the journal with the server's answer and its URI (never
        retried on their own: they would block everything after them; `ddpmlab tracking sync
        --retry-rejected` sends them again)."""
        lines = [json.dumps({"error": error[:500], "uri": uri, **record}, separators=(",", ":")) + "\n" for record in records]
        try:
            with open(self.rejected_path, "a", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise JournalError(f"cannot write {self.rejected_path}: {e}") from e

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
        self._sent = None  # another process may have sent some before it let go
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # releases the lock
            self._handle = None

    def remove(self) -> None:
        """Everything sent: the journal and its files go (set-aside records stay, for a person)."""
        shutil.rmtree(self.files, ignore_errors=True)
        self.sent_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self.close()


class Servers:
    """servers.json: normalised URI -> the identity of the server that answered there."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "servers.json"

    def read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # only a shortcut: without it, journals still match by their normalised URI

    def learn(self, uri: str, identity: str) -> None:
        key = normalise_uri(uri)
        if self.read().get(key) == identity:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _write_atomic(self.path, json.dumps({**self.read(), key: identity}, indent=0))

    def same(self, a: str, b: str) -> bool:
        """Whether URIs ``a`` and ``b`` reach one server: one normalised spelling, or one identity."""
        a, b = normalise_uri(a), normalise_uri(b)
        if a == b:
            return True
        known = self.read()
        return a in known and known[a] == known.get(b)


def set_aside_records(folder: Path, uri: str) -> dict[Path, list[dict]]:
    """The records set aside for the server at ``uri``, per *.rejected file (each with its
    ``error`` and ``uri``), oldest file first."""
    servers, found = Servers(folder), {}
    for path in sorted(folder.glob("*.rejected")) if folder.is_dir() else []:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if records and servers.same(records[0].get("uri", ""), uri):
            found[path] = records
    return found


def journals(folder: Path, uri: str) -> Iterator[Journal]:
    """The journals in ``folder`` written for the server at ``uri`` (under any spelling of it, or
    any URI that led to the same server), oldest first (records of one stage may refer to a run an
    earlier stage started)."""
    servers = Servers(folder)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        journal = Journal(path)
        try:
            written_for = journal.uri()
        except FileNotFoundError:
            continue  # sent and removed by another process meanwhile
        if written_for is not None and servers.same(written_for, uri):
            yield journal


class RunIds:
    """pending run id -> server run id (or REFUSED), shared by every process of a project (in
    memory only without a folder: a local store, where runs are created at once)."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / "run_ids.json" if folder else None
        self._memory: dict[str, str] = {}

    def _read(self) -> dict[str, str]:
        if self.path is None:
            return self._memory
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            found = json.loads(text)
        except ValueError as e:
            raise JournalError(
                f"{self.path} is not valid JSON ({e}); it maps runs started during an outage to the server's ids, so it "
                "is never overwritten: repair it, or move it aside if none of its runs matter any more"
            ) from e
        if not isinstance(found, dict):
            raise JournalError(f"{self.path} holds {type(found).__name__}, not a mapping of run ids: repair it or move it aside")
        return found

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

    def forget(self, pending: str) -> None:
        """Drop ``pending``'s entry (a refused creation, to be tried again)."""
        if self.path is None:
            self._memory.pop(pending, None)
            return
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _write_atomic(self.path, json.dumps({k: v for k, v in self._read().items() if k != pending}, indent=0))
