"""The write-ahead journal of MLflow records and the outbox that sends it (pipeline/journal.py,
pipeline/outbox.py), against a real MLflow store (a SQLite file; the outbox sends to any store):
order, pending run ids across journals, a crash mid-write, leftovers of dead processes, records
a server refuses, and runs deleted meanwhile. Servers and their faults: tests/test_team_faults.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import free_port
from ddpmlab.pipeline.journal import (
    Journal,
    JournalError,
    RunIds,
    Servers,
    is_pending,
    journals,
    new_pending_id,
    normalise_uri,
    set_aside_records,
)
from ddpmlab.pipeline.outbox import Outbox, batches, is_unreachable


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Path]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("ddpmlab", artifact_location=(tmp_path / "mlruns").as_uri())
    return uri, tmp_path / "journal"


def create(run: str, name: str = "r", tags: dict | None = None) -> dict:
    return {"op": "create", "run": run, "experiment": "ddpmlab", "name": name, "tags": tags or {}, "time": 1_000}


def points(run: str, steps: range, key: str = "loss") -> list[dict]:
    return [{"op": "log", "run": run, "metrics": [[key, float(s) / 10, 2_000 + s, s]]} for s in steps]


def test_records_go_in_order_with_their_steps_and_timestamps_and_the_journal_goes(store):
    uri, folder = store
    box = Outbox(folder, uri)
    run = new_pending_id()
    for record in [create(run), {"op": "log", "run": run, "params": {"a": "1"}}, *points(run, range(250)), {"op": "end", "run": run, "status": "FINISHED", "time": 9_000}]:
        box.append(record)
    assert box.drain(60)
    real = box.ids.get(run)
    assert real and not is_pending(real)
    client = MlflowClient(uri)
    history = client.get_metric_history(real, "loss")
    assert sorted((p.step, p.value, p.timestamp) for p in history) == [(s, s / 10, 2_000 + s) for s in range(250)]
    got = client.get_run(real)
    assert got.data.params == {"a": "1"} and got.info.status == "FINISHED" and got.info.end_time == 9_000
    box.close()
    assert not list(folder.glob("*.jsonl"))


def test_consecutive_points_of_one_run_go_in_one_batch_and_a_param_named_again_starts_another():
    a, b = "run-a", "run-b"
    params = [{"op": "log", "run": b, "params": {"seed": "0", "lr": "1"}}, {"op": "log", "run": b, "params": {"seed": "0"}}]
    records = list(enumerate([create(a), *points(a, range(3)), *points(b, range(2)), *params, {"op": "end", "run": a, "status": "FINISHED", "time": 1}]))
    assert [[i for i, _ in batch] for batch in batches(records)] == [[0], [1, 2, 3], [4, 5, 6], [7], [8]]


def test_a_line_cut_short_by_a_crash_is_ignored_and_the_rest_is_sent_by_the_next_process(store):
    uri, folder = store
    run = new_pending_id()
    script = f"""
import os
from pathlib import Path
from ddpmlab.pipeline.journal import Journal
journal = Journal.create(Path({str(folder)!r}), {uri!r})
for record in {json.dumps([create(run), *points(run, range(5))])}:
    journal.append(record)
journal._handle.write(b'{{"op": "log", "run": "{run}", "metr')  # killed mid-write
os._exit(9)
"""
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    (leftover,) = journals(folder, uri)
    assert [r["op"] for r in leftover.records()] == ["open", "create", "log", "log", "log", "log", "log"]
    box = Outbox(folder, uri)
    assert box.pending() == 6
    assert box.drain(60)
    real = RunIds(folder).get(run)
    assert [p.step for p in MlflowClient(uri).get_metric_history(real, "loss")] == [0, 1, 2, 3, 4]
    assert not list(folder.glob("*.jsonl"))  # the leftover went once it was all sent


def test_drain_returns_only_once_the_leftovers_it_sent_are_removed(store, monkeypatch):
    """`ddpmlab tracking sync` exits right after drain(): a leftover whose last record went but whose
    file the thread has not removed yet would stay on disk. Removal is slowed here to widen the window."""
    uri, folder = store
    run = new_pending_id()
    leftover = Journal.create(folder, uri)
    for record in [create(run), *points(run, range(3))]:
        leftover.append(record)
    leftover.close()
    slow_remove = Journal.remove

    def remove(self: Journal) -> None:
        time.sleep(1.0)
        slow_remove(self)

    monkeypatch.setattr(Journal, "remove", remove)
    box = Outbox(folder, uri)
    assert box.drain(60)
    assert not list(folder.glob("*.jsonl"))
    assert [p.step for p in MlflowClient(uri).get_metric_history(RunIds(folder).get(run), "loss")] == [0, 1, 2]


def test_a_later_journal_refers_to_a_run_an_earlier_one_started(store):
    """evaluate nests its runs under the training run that train started during an outage: the
    pending id in the parent tag and in a param becomes the server's id."""
    uri, folder = store
    train_run = new_pending_id()
    first = Journal.create(folder, uri)
    for record in [create(train_run, "train"), *points(train_run, range(2))]:
        first.append(record)
    first.close()  # its process ended with the server still down
    time.sleep(1.1)  # the next journal's name sorts after it
    box = Outbox(folder, uri)
    child = new_pending_id()
    box.append(create(child, "eval", tags={"mlflow.parentRunId": train_run}))
    box.append({"op": "log", "run": child, "params": {"train_run_id": train_run}})
    assert box.drain(60)
    real_train, real_child = box.ids.get(train_run), box.ids.get(child)
    got = MlflowClient(uri).get_run(real_child)
    assert got.data.tags["mlflow.parentRunId"] == real_train and got.data.params["train_run_id"] == real_train


def test_a_record_the_store_refuses_is_set_aside_and_the_rest_still_goes(store):
    uri, folder = store
    box = Outbox(folder, uri)
    run = new_pending_id()
    box.append(create(run))
    box.append({"op": "log", "run": run, "params": {"lr": "0.1"}})
    box.append({"op": "log", "run": run, "params": {"lr": "0.2"}})  # a param may not change: MLflow answers 400
    box.append({"op": "end", "run": run, "status": "FINISHED", "time": 5})  # not a log record: a batch of its own
    assert box.drain(60)
    assert len(box.rejected) == 1 and "Changing param values is not allowed" in box.rejected[0]
    (rejected,) = folder.glob("*.rejected")
    assert [json.loads(line)["params"] for line in rejected.read_text().splitlines()] == [{"lr": "0.2"}]
    got = MlflowClient(uri).get_run(box.ids.get(run))
    assert got.data.params == {"lr": "0.1"} and got.info.status == "FINISHED"


def test_records_of_a_run_the_store_does_not_have_are_set_aside_and_named_not_dropped(store):
    """A person deleted the run meanwhile: its records cannot go anywhere, must not block the rest,
    and must not vanish either: they are set aside and the stage fails naming them."""
    uri, folder = store
    box = Outbox(folder, uri)
    box.append({"op": "log", "run": "0" * 32, "metrics": [["loss", 1.0, 1, 0]]})
    run = new_pending_id()
    box.append(create(run))
    assert box.drain(60)
    assert len(box.rejected) == 1 and f"run {'0' * 32} does not exist on the server" in box.rejected[0]
    (aside,) = set_aside_records(folder, uri).values()
    assert [r["metrics"] for r in aside] == [[["loss", 1.0, 1, 0]]]
    assert box.ids.get(run) is not None


def test_a_create_resent_after_its_answer_was_lost_finds_its_run_and_a_full_resend_adds_no_model_version(store, tmp_path):
    uri, folder = store
    run = new_pending_id()
    artifact = tmp_path / "model.txt"
    artifact.write_text("weights\n")
    records = [create(run), *points(run, range(3)), {"op": "artifact", "run": run, "file": str(artifact), "path": "model"},
               {"op": "register", "run": run, "name": "ddpm", "path": "model", "tags": {}, "description": "d"},
               {"op": "end", "run": run, "status": "FINISHED", "time": 9_000}]  # fmt: skip
    box = Outbox(folder, uri)
    for record in records:
        box.append(record)
    assert box.drain(60)
    # The process is killed before it notes what went: every record goes again, run_ids.json lost too.
    box.journal.mark_sent(1)
    (folder / "run_ids.json").unlink()
    again = Outbox(folder, uri)
    again.claimed[box.journal.path] = box.journal
    assert again.drain(60) and not again.rejected
    client = MlflowClient(uri)
    (only,) = client.search_runs([client.get_experiment_by_name("ddpmlab").experiment_id])
    assert again.ids.get(run) == only.info.run_id
    assert len(client.search_model_versions("name = 'ddpm'")) == 1


def test_a_refused_create_sets_its_run_aside_the_other_journals_all_go_and_retry_sends_it_once_fixed(store):
    uri, folder = store
    client = MlflowClient(uri)
    closed = client.create_experiment("closed")
    client.delete_experiment(closed)  # creating a run in a deleted experiment is refused (400)
    refused, fine = new_pending_id(), new_pending_id()
    first = Journal.create(folder, uri)
    for record in [{**create(refused), "experiment": "closed"}, *points(refused, range(2))]:
        first.append(record)
    first.close()
    time.sleep(1.1)
    second = Journal.create(folder, uri)
    for record in [create(fine), *points(fine, range(4))]:
        second.append(record)
    second.close()
    box = Outbox(folder, uri)
    assert box.drain(60)
    assert len(box.rejected) == 3 and "create record of run " + refused in box.rejected[0]
    assert [p.step for p in client.get_metric_history(box.ids.get(fine), "loss")] == [0, 1, 2, 3]
    client.restore_experiment(closed)  # the fix; then what `ddpmlab tracking sync --retry-rejected` does
    retry = Outbox(folder, uri)
    assert retry.retry_rejected() == 3
    assert retry.drain(60) and not retry.rejected
    retry.close()
    real = RunIds(folder).get(refused)
    assert client.get_run(real).info.experiment_id == closed
    assert [p.step for p in client.get_metric_history(real, "loss")] == [0, 1]
    assert not list(folder.glob("*.rejected")) and not list(folder.glob("*.jsonl"))


def test_a_400_on_one_param_record_costs_none_of_the_metric_points_batched_with_it(store):
    uri, folder = store
    box = Outbox(folder, uri)
    run = new_pending_id()
    box.append(create(run))
    box.append({"op": "log", "run": run, "params": {"lr": "0.1"}})
    later = [*points(run, range(5)), {"op": "log", "run": run, "params": {"lr": "0.2"}}, *points(run, range(5, 10))]
    assert len(batches(list(enumerate(later)))) == 1  # all in one log-batch call
    for record in later:
        box.append(record)
    assert box.drain(60)
    assert len(box.rejected) == 1 and "lr" in box.rejected[0]
    assert sorted(p.step for p in MlflowClient(uri).get_metric_history(box.ids.get(run), "loss")) == list(range(10))


@pytest.mark.parametrize("spelling", ["{uri}/", "{uri}//", "HTTP://LOCALHOST:{port}", "http://localhost:{port}/"])
def test_every_spelling_of_a_servers_uri_normalises_to_one(spelling: str):
    """What journals() matches by; test_tracking_server.py sends a journal written under a trailing slash for real."""
    written_for = "http://localhost:5123"
    assert normalise_uri(spelling.format(uri=written_for, port=5123)) == normalise_uri(written_for)
    assert normalise_uri("https://h:443/x/") == "https://h/x" and normalise_uri("http://h:8080") == "http://h:8080"


def test_journals_of_one_server_are_found_under_any_uri_it_answered_at(tmp_path):
    folder = tmp_path / "journal"
    old = Journal.create(folder, "http://10.0.0.5:5000")
    old.close()
    servers = Servers(folder)
    assert list(journals(folder, "https://mlflow.example.org")) == []  # unknown: not the same server
    servers.learn("http://10.0.0.5:5000/", "1700000000000:Default")
    servers.learn("https://mlflow.example.org", "1700000000000:Default")  # the proxy in front of it
    assert [j.path for j in journals(folder, "https://mlflow.example.org/")] == [old.path]
    servers.learn("https://other.example.org", "1800000000000:Default")
    assert list(journals(folder, "https://other.example.org")) == []


def test_a_corrupt_run_ids_file_is_refused_naming_it_and_never_overwritten(tmp_path):
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "run_ids.json").write_text('{"pending-1": "abc",')  # cut short
    ids = RunIds(folder)
    with pytest.raises(JournalError, match="run_ids.json is not valid JSON"):
        ids.get(new_pending_id())
    with pytest.raises(JournalError):
        ids.set(new_pending_id(), "def")
    assert (folder / "run_ids.json").read_text() == '{"pending-1": "abc",'


def test_reads_take_only_the_bytes_appended_since_the_last(store):
    uri, folder = store
    journal = Journal.create(folder, uri)
    run = new_pending_id()
    for record in [create(run), *points(run, range(3))]:
        journal.append(record)
    assert len(journal.records()) == 5
    journal._handle.write(b'{"op": "log", "run": "x", "metr')  # a line being written
    assert len(journal.records()) == 5
    journal._handle.write(b'ics": []}\n')
    assert journal.records()[-1] == {"op": "log", "run": "x", "metrics": []} and len(journal.records()) == 6
    assert journal.unsent_count() == 5 and [i for i, _ in journal.unsent()] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "message,unreachable",
    [
        ("API request to http://h/api failed with exception HTTPConnectionPool: Max retries exceeded (Connection refused)", True),
        ("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 503 != 200", True),
        ("HTTPConnectionPool(host='h'): Read timed out. (read timeout=120)", True),
        ("Max retries exceeded with url: /x (Caused by ResponseError('too many 500 error responses'))", False),
        ("API request to endpoint /api/2.0/mlflow-artifacts/artifacts/x failed with error code 500 != 200", False),
        ("RESOURCE_DOES_NOT_EXIST: Run 'x' not found", False),
    ],
)
def test_an_outage_is_told_from_an_error_answer(message: str, unreachable: bool):
    assert is_unreachable(RuntimeError(message)) is unreachable


def test_a_server_is_learnt_at_its_first_answer_and_not_while_it_is_down(store, monkeypatch):
    uri, folder = store
    box = Outbox(folder, uri)
    box._learn_server(MlflowClient(uri))
    assert box._server_known and Servers(folder).read() == {uri: Servers(folder).read()[uri]}
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = Outbox(folder, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException):
        down._learn_server(MlflowClient(down.uri))
    assert not down._server_known and down.uri not in Servers(folder).read()  # learnt at a later pass, once it answers
