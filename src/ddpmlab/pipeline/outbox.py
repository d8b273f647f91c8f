"""Sends the journal's records (``pipeline.journal``) to MLflow, in order, from a background thread.

For an http(s) tracking server every record is journaled first and sent by :class:`Outbox`'s
thread: while the server is down the stage goes on at full speed, the thread retries with a
backoff capped at :data:`MAX_BACKOFF_S`, and when the server is back it sends the backlog with
the records' original timestamps and steps. Any other store (the project's SQLite file) is
local and never down: :func:`apply` runs in the caller's thread and nothing is journaled.

Sending is at least once: a record whose answer was lost in a connection drop is sent again, so
a metric point may appear twice in the server's history; none is ever missing. Creating a run
and registering a model version are exactly once: a resent creation finds the run it made by
its pending-id tag, and a run gets at most one version of a model.

A record the server refuses outright (HTTP 400, or a run that no longer exists) is set aside
with the answer, alone: a refused batch is split and resent record by record, so one bad param
never costs the metric points beside it. A journal blocked on a run another live process has
not created yet does not hold up the other journals. Set-aside records fail the stage, naming
them, and `ddpmlab tracking sync --retry-rejected` sends them again once the cause is fixed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import click
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ddpmlab.pipeline.journal import (
    EXPERIMENT_KIND,
    PENDING_TAG,
    REFUSED,
    Journal,
    RunIds,
    Servers,
    is_pending,
    journals,
    set_aside_records,
)

MAX_BACKOFF_S = 30.0
# MLflow's limits on one log-batch call
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100

_UNREACHABLE_SIGNS = (
    "connection refused", "failed to establish", "max retries exceeded", "connection aborted", "connection reset",
    "remotedisconnected", "timed out", "name or service not known", "too many 502", "too many 503", "too many 504",
    "error code 502", "error code 503", "error code 504",
)  # fmt: skip


def is_unreachable(error: BaseException) -> bool:
    """A server that did not answer (or a proxy saying nothing is behind it), as opposed to one
    that answered with an error. Waiting helps the first; the second needs a person."""
    text = str(error).lower()
    if "too many 500" in text or "error code 500" in text:
        return False
    return any(sign in text for sign in _UNREACHABLE_SIGNS)


class Blocked(Exception):
    """A record names a run that another process has not created on the server yet."""


class RunGone(Exception):
    """The server has no such run (deleted by a person): its records are set aside."""


class RunRefused(Exception):
    """The server refused to create this run: its records are set aside with the creation."""


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # a parallel stage created it first
    return experiment.experiment_id


def _resolve(run_id: str, ids: RunIds) -> str:
    real = ids.get(run_id)
    if real is None:
        raise Blocked(run_id)
    if real == REFUSED:
        raise RunRefused(run_id)
    return real


def _resolve_values(values: dict[str, str], ids: RunIds) -> dict[str, str]:
    """Pending run ids inside values (a parent-run tag, a train_run_id param) become real ones."""
    return {k: (ids.get(v) or v) if is_pending(v) else v for k, v in values.items()}


def _merged(records: list[dict], field: str, ids: RunIds) -> dict[str, str]:
    merged: dict[str, str] = {}
    for record in records:
        merged.update(_resolve_values(record.get(field, {}), ids))
    return merged


def is_rejected(error: BaseException) -> bool:
    """A request the server will refuse however often it is sent (HTTP 400: a bad value, a param
    changed), as opposed to an outage, an overload or a permission an admin can still grant."""
    return isinstance(error, MlflowException) and error.get_http_status_code() == 400


def apply(client: MlflowClient, records: list[dict], ids: RunIds) -> None:
    """Send ``records``, consecutive ones of one run, to the server: a run start, one ``log``
    record (or several, merged into log-batch calls), an artifact or a run end."""
    first = records[0]
    op = first["op"]
    if op == "create":
        ids.set(first["run"], _create_once(client, first, ids))
        return
    try:
        run_id = _resolve(first["run"], ids)
        if op == "log":
            metrics = [Metric(k, v, ts, step) for r in records for k, v, ts, step in r.get("metrics", [])]
            params = [Param(k, v) for k, v in _merged(records, "params", ids).items()]  # each key once: see batches()
            tags = [RunTag(k, v) for k, v in _merged(records, "tags", ids).items()]
            while metrics or params or tags:
                client.log_batch(run_id, metrics=metrics[:MAX_METRICS], params=params[:MAX_PARAMS], tags=tags[:MAX_TAGS])
                metrics, params, tags = metrics[MAX_METRICS:], params[MAX_PARAMS:], tags[MAX_TAGS:]
        elif op == "artifact":
            client.log_artifact(run_id, first["file"], artifact_path=first.get("path"))
        elif op == "register":
            register_version(client, first["name"], run_id, first["path"], first["tags"], first["description"])
        elif op == "version_tags":
            for version in client.search_model_versions(f"run_id = '{run_id}'"):
                for key, value in first["tags"].items():
                    client.set_model_version_tag(version.name, version.version, key, value)
        elif op == "resume":
            client.update_run(run_id, status="RUNNING")
        elif op == "end":
            client.set_terminated(run_id, status=first["status"], end_time=first["time"])
        else:
            raise ValueError(f"unknown journal record {op!r}")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RunGone(first["run"]) from e
        raise


def _create_once(client: MlflowClient, record: dict, ids: RunIds) -> str:
    """The run of a ``create`` record: the one an earlier send of it made (its answer lost, or the
    process killed before noting it), found by its pending-id tag, else a new one."""
    experiment_id = _experiment_id(client, record["experiment"])
    pending = record["run"]
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PENDING_TAG}` = '{pending}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**_resolve_values(record["tags"], ids), PENDING_TAG: pending}
    return client.create_run(experiment_id, start_time=record["time"], tags=tags, run_name=record["name"]).info.run_id


def register_version(client: MlflowClient, name: str, run_id: str, artifact_path: str, tags: dict[str, str], description: str) -> None:
    """A new version of registered model ``name`` (created if missing) from the run's ``artifact_path``.
    Idempotent, as records may be sent twice: a run with a version of ``name`` already gets none."""
    try:
        client.create_registered_model(name, description="DDPM models trained by ddpmlab; every version is one training run")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    quoted = name.replace("'", "\\'")
    if client.search_model_versions(f"name = '{quoted}' AND run_id = '{run_id}'"):
        return
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    client.create_model_version(name, source, run_id=run_id, tags=tags, description=description)


def batches(unsent: list[tuple[int, dict]], limit: int = 200) -> list[list[tuple[int, dict]]]:
    """Consecutive ``log`` records of one run go in one batch (one call per 1,000 points, not one
    per training step), unless a param is named again: a batch may hold a key once, and a changed
    value must reach the server to be refused as it would be alone. Every other record alone."""
    out: list[list[tuple[int, dict]]] = []
    keys: set[str] = set()  # params in the last batch
    for index, record in unsent:
        last = out[-1] if out else None
        params = set(record.get("params", {}))
        joins = last and record["op"] == "log" and last[-1][1]["op"] == "log" and last[-1][1]["run"] == record["run"]
        if joins and len(last) < limit and not params & keys:
            last.append((index, record))
            keys |= params
        else:
            out.append([(index, record)])
            keys = params
    return out


class Outbox:
    """This process's journal for one (project, server), sent by a daemon thread; the thread also
    sends leftovers of earlier processes for the same server first, oldest first."""

    def __init__(self, folder: Path, uri: str) -> None:
        self.folder, self.uri = folder, uri
        self.ids = RunIds(folder)
        self.journal: Journal | None = None  # created at the first record
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.last_error: BaseException | None = None
        self.rejected: list[str] = []  # "<journal>: <op> record of run <id>: <answer>", one per set-aside record
        self.claimed: dict[Path, Journal] = {}  # leftovers this process holds the lock of
        self._thread: threading.Thread | None = None
        self._server_known = False

    def _own(self) -> Journal:
        """This process's journal, created at its first record (call with the lock held)."""
        if self.journal is None:
            self.journal = Journal.create(self.folder, self.uri)
        return self.journal

    def append(self, record: dict) -> None:
        with self.lock:
            self._own().append(record)
        self._start()

    def keep_file(self, path: Path) -> str:
        with self.lock:
            return str(self._own().keep_file(path))

    def _start(self) -> None:
        with self.lock:  # the thread decides to stop under the same lock: a record is never left without one
            self.wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="ddpmlab-outbox", daemon=True)
                self._thread.start()

    def _pending_journals(self) -> list[Journal]:
        """Leftovers this process holds or can lock (oldest first), then its own journal. A lock
        once taken is kept until the leftover is sent: flock locks are per open file, so a
        second open of it in this process would not be let in."""
        with self.lock:
            own = self.journal.path if self.journal else None
            for journal in journals(self.folder, self.uri):
                if journal.path != own and journal.path not in self.claimed and journal.try_lock():
                    self.claimed[journal.path] = journal
            return sorted(self.claimed.values(), key=lambda j: j.path.name) + ([self.journal] if self.journal else [])

    def pending(self) -> int:
        """Records not yet on the server, in this process's journal and the leftovers it can send."""
        return sum(journal.unsent_count() for journal in self._pending_journals() if journal.path.exists())

    def _set_aside(self, journal: Journal, record: dict, error: str) -> None:
        journal.set_aside([record], error, self.uri)
        what = f"{journal.rejected_path.name}: {record['op']} record of run {record.get('run')}: {error[:300]}"
        self.rejected.append(what)
        click.echo(f"warning: {self.uri} refused a record; set aside in {what}", err=True)

    def _apply_alone(self, journal: Journal, records: list[dict], client: MlflowClient) -> None:
        """Send ``records`` (one batch); a refusal is pinned on the single record that caused it."""
        try:
            apply(client, records, self.ids)
        except RunGone as gone:
            for record in records:
                self._set_aside(journal, record, f"run {gone} does not exist on the server (deleted?)")
        except RunRefused as refused:
            for record in records:
                self._set_aside(journal, record, f"the server refused to create run {refused}")
        except MlflowException as e:
            if not is_rejected(e):
                raise
            if len(records) > 1:  # which one? each alone: the others go
                for record in records:
                    self._apply_alone(journal, [record], client)
                return
            if records[0]["op"] == "create":
                self.ids.set(records[0]["run"], REFUSED)  # its later records are set aside with it, not blocked
            self._set_aside(journal, records[0], str(e))

    def _send(self, journal: Journal, client: MlflowClient) -> None:
        for batch in batches(journal.unsent()):
            self._apply_alone(journal, [r for _, r in batch], client)
            journal.mark_sent(batch[-1][0] + 1)
        if journal is not self.journal:
            journal.remove()  # a leftover, all sent; gone from disk before drain() may count it done
            with self.lock:
                self.claimed.pop(journal.path, None)

    def _learn_server(self, client: MlflowClient) -> None:
        """Note which server answers at this URI (its Default experiment's creation time), so that
        journals written under another URI of the same server (before a proxy) are found too."""
        if self._server_known:
            return
        try:
            default = client.get_experiment("0")
        except MlflowException as e:
            if is_unreachable(e):
                raise  # down: the pass is retried, and the server learnt once it answers
            self._server_known = True  # no Default experiment to tell it by: URIs are matched by spelling only
            return
        Servers(self.folder).learn(self.uri, f"{default.creation_time}:{default.name}")
        self._server_known = True

    def _loop(self) -> None:
        client = MlflowClient(self.uri)
        backoff = 1.0
        while True:
            self.wake.clear()
            blocked = False
            try:
                self._learn_server(client)
                for journal in self._pending_journals():
                    try:
                        self._send(journal, client)
                    except Blocked:
                        blocked = True  # another live process has not created that run yet: the next journal
                self.last_error, backoff = None, 1.0
            except Exception as e:  # noqa: BLE001 - every failure is retried; drain() reports the last one
                self.last_error = e
                self.wake.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if blocked:
                self.wake.wait(backoff)
                continue
            if not self.wake.wait(5.0):
                with self.lock:
                    if not self.wake.is_set():
                        self._thread = None
                        return  # idle: the next record starts a new thread

    def retry_rejected(self) -> int:
        """Put every record set aside for this server back into this process's journal, in order (a
        refused creation is tried again), and drop the *.rejected files; returns how many."""
        count = 0
        for path, records in set_aside_records(self.folder, self.uri).items():
            for record in records:
                record = {k: v for k, v in record.items() if k not in ("error", "uri")}
                if record["op"] == "create" and self.ids.get(record["run"]) == REFUSED:
                    self.ids.forget(record["run"])
                self.append(record)
                count += 1
            path.unlink()  # its records are in this process's journal now, flushed
        return count

    def sync(self) -> None:
        """fsync this process's journal (at a checkpoint, at the stage's end)."""
        with self.lock:
            if self.journal is not None:
                self.journal.sync()

    def resolved(self, run_id: str, timeout_s: float) -> str:
        """The server's id of a run this process started, waiting up to ``timeout_s`` for it;
        the pending id if the server has not created it by then."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            real = self.ids.get(run_id)
            if real is not None:
                return real
            if self.last_error is not None and is_unreachable(self.last_error):
                break
            time.sleep(0.05)
        return self.ids.get(run_id) or run_id

    def drain(self, timeout_s: float) -> bool:
        """Wait until every record this process can send is on the server and every leftover it
        sent is removed (the process may exit next, and the thread with it); False at the timeout."""
        deadline = time.monotonic() + timeout_s
        self._start()
        while True:
            if self.pending() == 0:
                with self.lock:
                    if not self.claimed:
                        return True
                    idle = self._thread is None
                if idle:  # a sent leftover pending() claimed after the thread went idle
                    self._start()
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def close(self) -> None:
        """Forget this process's journal once it is all sent (a new one starts at the next record)."""
        with self.lock:
            if self.journal is not None and not self.journal.unsent():
                self.journal.remove()
                self.journal = None
