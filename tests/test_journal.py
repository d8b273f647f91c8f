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
from mlflow.tracking import MlflowClient

from ddpmlab.pipeline.journal import Journal, RunIds, is_pending, journals, new_pending_id
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
journal._handle.write('{{"op": "log", "run": "{run}", "metr')  # killed mid-write
journal._handle.flush()
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
    assert len(box.rejected) == 1 and box.rejected[0].get_http_status_code() == 400
    (rejected,) = folder.glob("*.rejected")
    assert [json.loads(line)["params"] for line in rejected.read_text().splitlines()] == [{"lr": "0.2"}]
    got = MlflowClient(uri).get_run(box.ids.get(run))
    assert got.data.params == {"lr": "0.1"} and got.info.status == "FINISHED"


def test_records_of_a_run_the_store_does_not_have_are_dropped_with_a_warning(store, capsys):
    """A person deleted the run meanwhile: its records cannot go anywhere, and must not block the rest."""
    uri, folder = store
    box = Outbox(folder, uri)
    box.append({"op": "log", "run": "0" * 32, "metrics": [["loss", 1.0, 1, 0]]})
    run = new_pending_id()
    box.append(create(run))
    assert box.drain(60)
    assert box.dropped == 1 and "no longer exists" in capsys.readouterr().err
    assert box.ids.get(run) is not None


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
