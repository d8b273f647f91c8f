"""The only module that imports mlflow: where runs are stored, how they are named and tagged.

Default store: ``<root>/mlflow.db`` (SQLite) with artifacts in ``<root>/mlruns``, where root
is ``$DVC_ROOT`` when DVC runs the stage (also inside the temporary copies of queued
experiments, so no run is lost with the copy) and the current directory otherwise.
``MLFLOW_TRACKING_URI`` overrides the store, e.g. for a team server; every run start first
checks that such a server answers (:func:`require_reachable`), since MLflow's own client
retries an unreachable one for minutes.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from ddpmlab.config import REPLICATE_SEEDS, Params, config_id, flatten

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment without this tag in its GenAI (traces) view, where
# training runs, their params and metric charts are hidden; this kind opens "Model training".
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server of MLFLOW_TRACKING_URI does not answer."""


def require_reachable(uri: str | None = None, timeout_s: float = 5.0) -> None:
    """Fail fast, with what to do, when an http(s) tracking URI has no server answering.

    One GET of the server's /health endpoint, no retries; other stores (sqlite, file,
    databricks, ...) are not checked. Any HTTP answer below 500 counts as reachable: a proxy
    or authentication layer may hide /health, and MLflow reports those errors itself."""
    uri = uri or tracking_uri()
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
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


def config_tags(params: Params, run_key: str | None = None) -> dict[str, str]:
    """The config id (replicates share it; the UI can group by it), the replicate's seeds and,
    for an evaluation run, "<config id> <run key>": one group per (config, sampler, spacing, steps, w)."""
    cid = config_id(params)
    flat = flatten(params.to_dict())
    tags = {CONFIG_TAG: cid, REPLICATE_TAG: " ".join(f"{k}={flat[k]}" for k in REPLICATE_SEEDS)}
    if run_key is not None:
        tags[CONFIG_RUN_TAG] = f"{cid} {run_key}"
    return tags


@contextmanager
def start_run(
    experiment: str, run_name: str, stage: str, parent_run_id: str | None = None, resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[str]:  # fmt: skip
    """Start a run in ``experiment``, tagged for DVC and git (and with ``tags``), or continue
    ``resume_run_id`` when it still exists; yields the run id. A run whose block raises is
    marked FAILED rather than left RUNNING."""
    use_experiment(experiment)
    tags = {**standard_tags(stage), **(tags or {})}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id  # shows the evaluation nested under its training run
    if resume_run_id and run_exists(resume_run_id):
        with mlflow.start_run(run_id=resume_run_id) as run:
            yield run.info.run_id
        return
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield run.info.run_id


def log_params(params: dict[str, Any]) -> None:
    """Log flat params; MLflow limits a value to 6000 characters and a batch to 100 params."""
    items = [(k, str(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """Log to the active run, or to ``run_id`` (e.g. a finished training run)."""
    if run_id is None:
        mlflow.log_metrics(metrics, step=step)
        return
    client = mlflow.tracking.MlflowClient(tracking_uri())
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step or 0)


def last_logged_step(run_id: str, key: str) -> int:
    """The highest step of metric ``key`` in run ``run_id``, -1 if it has none. A resumed training
    run logs only past it, so the steps between its last checkpoint and the crash are not doubled."""
    history = mlflow.tracking.MlflowClient(tracking_uri()).get_metric_history(run_id, key)
    return max((point.step for point in history), default=-1)


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        mlflow.tracking.MlflowClient(tracking_uri()).log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Every file under ``folder``, keeping its relative layout."""
    if run_id is None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    else:
        mlflow.tracking.MlflowClient(tracking_uri()).log_artifacts(run_id, str(folder), artifact_path=artifact_path)


def run_exists(run_id: str) -> bool:
    try:
        mlflow.tracking.MlflowClient(tracking_uri()).get_run(run_id)
    except MlflowException:
        return False
    return True


# -- reading runs back (ddpmlab compare) -------------------------------------------------------


def find_experiment(name: str) -> str | None:
    """The id of experiment ``name`` in the project's store, or None; creates nothing."""
    require_reachable()
    mlflow.set_tracking_uri(tracking_uri())
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
