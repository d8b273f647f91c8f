"""Where runs are stored, how they are named and tagged, and how records reach the store; with
``pipeline.outbox`` the only modules that import mlflow.

Default store: ``<root>/mlflow.db`` (SQLite) with artifacts in ``<root>/mlruns``, where root
is ``$DVC_ROOT`` when DVC runs the stage (also inside the temporary copies of queued
experiments, so no run is lost with the copy) and the current directory otherwise; records go
straight in. ``MLFLOW_TRACKING_URI`` overrides the store, e.g. for a team server. Then a stage
checks the server's answer and credentials before any work (:func:`check_access`: 401 and 403
fail at once), and every record goes to a journal first and is sent from a background thread
(``pipeline.journal``, ``pipeline.outbox``): a server that is down or restarting never stalls
or kills training, and :func:`finish` waits at the stage's end for the backlog to go.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags as resolve_context_tags

from ddpmlab.config import REPLICATE_SEEDS, Params, config_id, config_label, flatten
from ddpmlab.pipeline.journal import EXPERIMENT_KIND, JournalError, RunIds, is_pending, journals, new_pending_id
from ddpmlab.pipeline.outbox import Outbox, apply, is_unreachable

PARENT_TAG = "mlflow.parentRunId"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location(uri: str) -> str | None:
    """For a SQLite store, artifacts in ``mlruns/`` beside the database file (for the project's
    store, <root>/mlruns), absolute: not relative to whatever directory the first run happened
    to start in. Servers choose their own (None)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri.removeprefix(prefix)).resolve().parent / "mlruns").as_uri()


SERVER_COMMAND = "mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db"
# A stage waits this long at its end for the server to take what it logged (DDPMLAB_TRACKING_WAIT_S).
DEFAULT_WAIT_S = 120.0
CREATE_WAIT_S = 10.0  # how long a run start waits for the server's run id before going on with a pending one

# MLflow's client retries a failed request 7 times with backoff 2 (about 4 minutes per call); the
# outbox retries for as long as it takes, so each of its calls gives up after a few seconds.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


class TrackingError(RuntimeError):
    """A tracking failure a stage reports as a one-line error."""


class TrackingUnavailable(TrackingError):
    """The MLflow tracking server of MLFLOW_TRACKING_URI does not answer."""


class TrackingRefused(TrackingError):
    """The server answered 401 (no or wrong credentials) or 403 (no permission)."""


class TrackingFailed(TrackingError):
    """Records a stage logged are not on the server at its end, and the server answered with errors."""


def is_server(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def require_reachable(uri: str | None = None, timeout_s: float = 5.0) -> None:
    """Fail fast, with what to do, when an http(s) tracking URI has no server answering.

    One GET of the server's /health endpoint, no retries; other stores (sqlite, file,
    databricks, ...) are not checked. Any HTTP answer below 500 counts as reachable: a proxy
    or authentication layer may hide /health, and MLflow reports those errors itself."""
    uri = uri or tracking_uri()
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return
        reason = f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return  # something answered; MLflow has its own TLS settings (MLFLOW_TRACKING_INSECURE_TLS, ...) to judge it
        reason = str(e.reason)
    except (OSError, http.client.HTTPException) as e:  # a timeout or reset while reading, or not HTTP at all
        reason = str(e) or type(e).__name__
    raise TrackingUnavailable(
        f"MLflow tracking server {uri} is not reachable ({reason}). Start it, e.g. `{SERVER_COMMAND}`, "
        f"or unset MLFLOW_TRACKING_URI to use the project's local store ({default_tracking_uri()})."
    )


def _auth_headers() -> dict[str, str]:
    """The client's credentials as MLflow's own client sends them: MLFLOW_TRACKING_USERNAME /
    _PASSWORD (basic auth), else MLFLOW_TRACKING_TOKEN."""
    user, password, token = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD", "TOKEN"))
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {"Authorization": f"Bearer {token}"} if token else {}


def _api(uri: str, endpoint: str, payload: dict | None = None, timeout_s: float = 10.0) -> tuple[int, dict]:
    """(HTTP status, JSON body) of one MLflow REST call made with the client's credentials; status
    0 when no answer came (the server went away or is slow: the outbox retries, nothing to refuse)."""
    headers = {"Content-Type": "application/json", **_auth_headers()}
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):  # ValueError: a body that is not JSON
        return 0, {}


def check_credentials(uri: str, experiment: str | None) -> None:
    """Raise :class:`TrackingRefused`, naming the URI and what to do, when the server refuses the
    client's credentials (401) or its user may not log to ``experiment`` (403). The write it
    tries is the experiment-kind tag every new experiment gets anyway."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"user {user!r}" if user else "no user (MLFLOW_TRACKING_USERNAME is not set)"
    if experiment is None:  # a stage that logs to an existing run: sign-in only
        status, body = _api(uri, "experiments/search?max_results=1")
    else:
        status, body = _api(uri, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment}))
    if status == 401:
        raise TrackingRefused(
            f"MLflow tracking server {uri} refused the credentials of {who} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account on that server"
        )
    if status != 200 or experiment is None:
        return  # no such experiment yet (any signed-in user may create one), or a server error the outbox retries
    key, kind = EXPERIMENT_KIND
    status, _ = _api(uri, "experiments/set-experiment-tag", {"experiment_id": body["experiment"]["experiment_id"], "key": key, "value": kind})
    if status == 403:
        raise TrackingRefused(
            f"MLflow tracking server {uri}: {who} may not log to experiment {experiment!r} (HTTP 403). An admin grants it "
            f"with `ddpmlab team user {user or 'NAME'} --permission edit --experiment {experiment}`"
        )


def check_access(experiment: str | None) -> bool:
    """Before a stage's work: raise at once when a server refuses the client (401 / 403); when it
    does not answer, warn and return False: the stage runs, and what it logs waits in the journal
    until the server is back (a job started during an outage is not lost, see docs/team.md)."""
    uri = tracking_uri()
    if not is_server(uri):
        return True
    try:
        require_reachable(uri)
    except TrackingUnavailable as e:
        click.echo(f"warning: {e} Going on: what this stage logs is kept in {journal_folder()} and sent when the server answers.", err=True)
        return False
    check_credentials(uri, experiment)
    return True


def use_experiment(name: str) -> str:
    """Point mlflow at the project's store and experiment (created if missing); returns its id."""
    uri = tracking_uri()
    require_reachable(uri)
    mlflow.set_tracking_uri(uri)  # note: this also exports MLFLOW_TRACKING_URI to the environment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location(uri)
        try:
            mlflow.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:
            pass  # a parallel queued experiment created it first
        experiment = mlflow.get_experiment_by_name(name)
    key, kind = EXPERIMENT_KIND
    if experiment.tags.get(key) != kind:  # created by an older ddpmlab or by hand
        mlflow.tracking.MlflowClient(uri).set_experiment_tag(experiment.experiment_id, key, kind)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def standard_tags(stage: str) -> dict[str, str]:
    """DVC experiment name, DVC stage and git commit of the code that produced a run."""
    tags = {"ddpmlab.stage": stage}
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    commit = _git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


CONFIG_TAG = "ddpmlab.config_id"
REPLICATE_TAG = "ddpmlab.replicate"
CONFIG_RUN_TAG = "ddpmlab.config_run"
CONFIG_LABEL_TAG = "ddpmlab.config_label"


def config_tags(params: Params, run_key: str | None = None) -> dict[str, str]:
    """The config id (replicates share it; the UI can group by it), its readable label (the params that
    differ from the defaults: group by it to read the groups at a glance), the replicate's seeds and,
    for an evaluation run, "<config id> <run key>": one group per (config, sampler, spacing, steps, w)."""
    cid = config_id(params)
    flat = flatten(params.to_dict())
    tags = {CONFIG_TAG: cid, CONFIG_LABEL_TAG: config_label(params), REPLICATE_TAG: " ".join(f"{k}={flat[k]}" for k in REPLICATE_SEEDS)}
    if run_key is not None:
        tags[CONFIG_RUN_TAG] = f"{cid} {run_key}"
    return tags


# -- writing: every record goes through _record ------------------------------------------------

_outboxes: dict[tuple[str, str], Outbox] = {}
_active_runs: list[str] = []


def journal_folder() -> Path:
    return Path(os.environ.get("DDPMLAB_JOURNAL_DIR") or project_root() / ".ddpmlab" / "journal").resolve()


def _outbox(create: bool = True) -> Outbox | None:
    """This process's outbox for the current server; None for a local store (written directly)."""
    uri = tracking_uri()
    if not is_server(uri):
        return None
    key = (str(journal_folder()), uri)
    if key not in _outboxes and create:
        _outboxes[key] = Outbox(journal_folder(), uri)
    return _outboxes.get(key)


def outbox_for_sync() -> Outbox:
    """The outbox that sends the journal's leftovers for the current server (`ddpmlab tracking sync`)."""
    box = _outbox()
    if box is None:
        raise ValueError(f"{tracking_uri()} is a local store: nothing is journaled")
    return box


_direct_ids = RunIds(None)  # a local store creates runs at once; no pending id outlives the call


def _record(record: dict) -> None:
    box = _outbox()
    if box is None:
        apply(mlflow.tracking.MlflowClient(tracking_uri()), [record], _direct_ids)
    else:
        with journal_errors():
            box.append(record)


@contextmanager
def journal_errors() -> Iterator[None]:
    """A journal that cannot be written (a full disk) stops the stage with one line, before any
    record could go missing without a trace."""
    try:
        yield
    except JournalError as e:
        raise TrackingFailed(
            f"{e}. The stage stops here: its outputs so far and its last training checkpoint are intact; free space "
            "(or point DDPMLAB_JOURNAL_DIR elsewhere) and run it again: training resumes from that checkpoint."
        ) from e


def checkpoint() -> None:
    """Make this process's journal durable (fsync): at a training checkpoint, a power loss after
    it loses no record the checkpoint's log has."""
    box = _outbox(create=False)
    if box is not None:
        with journal_errors():
            box.sync()


def _now_ms() -> int:
    return int(time.time() * 1000)


def resolve(run_id: str) -> str:
    """The server's id of ``run_id``, or ``run_id`` itself while its run is pending (not yet on the server)."""
    if not is_pending(run_id):
        return run_id
    return RunIds(journal_folder()).get(run_id) or _direct_ids.get(run_id) or run_id


@contextmanager
def start_run(
    experiment: str, run_name: str, stage: str, parent_run_id: str | None = None, resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[str]:  # fmt: skip
    """Start a run in ``experiment``, tagged for DVC and git (and with ``tags``), or continue
    ``resume_run_id`` when it still exists; yields the run id (a pending id while a server does
    not answer, see :func:`resolve`). A run whose block raises is marked FAILED rather than left RUNNING."""
    box = _outbox()
    if box is None:
        use_experiment(experiment)  # a local store: created with its artifact folder beside the database
    tags = resolve_context_tags({**standard_tags(stage), **(tags or {})})
    if parent_run_id:
        tags[PARENT_TAG] = resolve(parent_run_id)  # shows the evaluation nested under its training run
    if resume_run_id and run_exists(resume_run_id):
        run_id = resolve(resume_run_id)
        _record({"op": "resume", "run": run_id})
    else:
        pending = new_pending_id()
        _record({"op": "create", "run": pending, "experiment": experiment, "name": run_name, "tags": tags, "time": _now_ms()})
        run_id = box.resolved(pending, CREATE_WAIT_S) if box else _direct_ids.get(pending)
    _active_runs.append(run_id)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        _active_runs.pop()
        _record({"op": "end", "run": run_id, "status": status, "time": _now_ms()})


def _run(run_id: str | None) -> str:
    if run_id is not None:
        return resolve(run_id)
    if not _active_runs:
        raise RuntimeError("no active run: log inside tracking.start_run or pass run_id")
    return _active_runs[-1]


def log_params(params: dict[str, Any]) -> None:
    """Log flat params to the active run; MLflow limits a value to 6000 characters."""
    _record({"op": "log", "run": _run(None), "params": {k: str(v) for k, v in params.items()}})


def set_tags(tags: dict[str, Any], run_id: str | None = None) -> None:
    """Set tags on the active run, or on ``run_id``: facts about a run that never make two configs differ."""
    _record({"op": "log", "run": _run(run_id), "tags": {k: str(v) for k, v in tags.items()}})


def log_metrics(metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """Log to the active run, or to ``run_id`` (e.g. a finished training run)."""
    now = _now_ms()
    points = [[key, float(value), now, step or 0] for key, value in metrics.items()]
    _record({"op": "log", "run": _run(run_id), "metrics": points})


def last_logged_step(run_id: str, key: str) -> int:
    """The highest step of metric ``key`` in run ``run_id``, on the server or still in the journal;
    -1 if it has none. A resumed training run logs only past it, so the steps between its last
    checkpoint and the crash are not doubled."""
    steps = [-1]
    box = _outbox()
    if box is not None:
        ids = {run_id, resolve(run_id)}
        for journal in journals(journal_folder(), tracking_uri()):
            steps += [p[3] for r in journal.records() if r.get("op") == "log" and r["run"] in ids for p in r.get("metrics", []) if p[0] == key]
    real = resolve(run_id)
    if not is_pending(real):
        try:
            steps += [point.step for point in mlflow.tracking.MlflowClient(tracking_uri()).get_metric_history(real, key)]
        except MlflowException as e:
            if not is_unreachable(e):
                raise
    return max(steps)


def _artifact(path: Path, artifact_path: str | None, run_id: str) -> None:
    box = _outbox()
    with journal_errors():
        file = box.keep_file(path) if box else str(path)  # a server: the journal keeps the bytes as they are now
    _record({"op": "artifact", "run": run_id, "file": file, "path": artifact_path})


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    _artifact(Path(path), artifact_path, _run(run_id))


def log_artifacts(folder: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Every file under ``folder``, keeping its relative layout."""
    folder, target = Path(folder), _run(run_id)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        parent = path.parent.relative_to(folder).as_posix()
        inner = None if parent == "." else parent
        joined = "/".join(part for part in (artifact_path, inner) if part) or None
        _artifact(path, joined, target)


def register_model(run_id: str, name: str, artifact_path: str, tags: dict[str, str], description: str) -> None:
    """Register run ``run_id``'s model folder ``artifact_path`` (logged before) as a new version of
    ``name``, created if missing; a run registered under ``name`` already is not registered twice."""
    _record({"op": "register", "run": _run(run_id), "name": name, "path": artifact_path, "tags": tags, "description": description})


def tag_model_versions(run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on every registered version of training run ``run_id``'s model (none: nothing happens)."""
    _record({"op": "version_tags", "run": _run(run_id), "tags": tags})


def run_exists(run_id: str) -> bool:
    """Whether logging to ``run_id`` makes sense: True for a run still pending in the journal, and
    while the server does not answer (the outbox drops records of a run the server lacks)."""
    real = resolve(run_id)
    if is_pending(real):
        return True
    try:
        mlflow.tracking.MlflowClient(tracking_uri()).get_run(real)
    except MlflowException as e:
        return is_server(tracking_uri()) and is_unreachable(e)
    return True


def finish(wait_s: float | None = None) -> None:
    """At the end of a stage: wait up to ``wait_s`` (DDPMLAB_TRACKING_WAIT_S, default 120 s) until
    the server has every record. A server still down by then only gets a warning: the records stay
    in the journal and go with the next stage or `ddpmlab tracking sync`. A server that answered
    with errors (a failing object store, a permission) fails the stage; local outputs are kept."""
    box = _outbox(create=False)
    if box is None:
        return
    wait = float(os.environ.get("DDPMLAB_TRACKING_WAIT_S", DEFAULT_WAIT_S)) if wait_s is None else wait_s
    with journal_errors():
        box.sync()
    drained = box.drain(wait)
    if box.rejected:
        refused, box.rejected = box.rejected, []
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise TrackingFailed(
            f"MLflow tracking server {box.uri} refused records of this stage: {refused[0]}{more}. They are set aside in "
            f"{box.folder} (*.rejected; `ddpmlab tracking status` lists them). The stage's local outputs are complete and "
            "untouched: once the cause is fixed, `ddpmlab tracking sync --retry-rejected` sends them."
        )
    if drained:
        box.close()
        return
    left, error = box.pending(), box.last_error
    where = f"{left} record(s) kept in {box.folder}"
    if error is None or is_unreachable(error):
        click.echo(
            f"warning: MLflow tracking server {box.uri} did not answer for {wait:.0f} s ({str(error)[:200]}); {where}. They are sent by the next "
            "stage that tracks, or now with `ddpmlab tracking sync`.", err=True,
        )  # fmt: skip
        return
    raise TrackingFailed(
        f"MLflow tracking server {box.uri} answered with errors for {wait:.0f} s ({str(error)[:300]}); {where}. The stage's "
        "local outputs are complete and untouched: once the server is fixed, `ddpmlab tracking sync` sends the records."
    )


# -- reading runs back (ddpmlab compare) -------------------------------------------------------


def find_experiment(name: str) -> str | None:
    """The id of experiment ``name`` in the project's store, or None; creates nothing. A server
    that refuses the client's credentials raises :class:`TrackingRefused`."""
    uri = tracking_uri()
    require_reachable(uri)
    if is_server(uri):
        check_credentials(uri, None)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


class BadSearch(ValueError):
    """MLflow refused a search filter; the message is MLflow's own reason."""


def search_runs(experiment_id: str, filter_string: str = "", run_ids: list[str] | None = None) -> pd.DataFrame:
    """All matching runs in one search (MLflow pages through them itself): params.*, metrics.*, tags.* columns.

    Raises :class:`BadSearch` when MLflow rejects ``filter_string``."""
    if run_ids:
        quoted = ", ".join(f"'{run_id}'" for run_id in run_ids)
        clause = f"attributes.run_id IN ({quoted})"
        filter_string = f"{filter_string} AND {clause}" if filter_string else clause
    try:
        return mlflow.search_runs(experiment_ids=[experiment_id], filter_string=filter_string, max_results=100_000, output_format="pandas")
    except MlflowException as e:
        raise BadSearch(e.message) from e


def metric_histories(run_ids: list[str], key: str) -> dict[str, pd.DataFrame]:
    """run id -> (step, value) of metric ``key``: MLflow has no bulk call for histories, so the
    requests for a handful of training runs go out in parallel."""
    client = mlflow.tracking.MlflowClient(tracking_uri())

    def fetch(run_id: str) -> pd.DataFrame:
        points = client.get_metric_history(run_id, key)
        return pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]}).sort_values("step")

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(run_ids, pool.map(fetch, run_ids)))


def download_artifacts(requests: list[tuple[str, str]], destination: Path) -> list[Path | None]:
    """Download (run id, artifact path) pairs into ``destination/<run id>/``; None where one is missing."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small image is noise

    def fetch(request: tuple[str, str]) -> Path | None:
        run_id, artifact = request
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(destination / run_id)))
        except (MlflowException, OSError):
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fetch, requests))
