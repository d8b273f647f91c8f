"""The only module that imports mlflow: where runs are stored, how they are named and tagged.

Default store: ``<root>/mlflow.db`` (SQLite) with artifacts in ``<root>/mlruns``, where root
is ``$DVC_ROOT`` when DVC runs the stage (also inside the temporary copies of queued
experiments, so no run is lost with the copy) and the current directory otherwise.
``MLFLOW_TRACKING_URI`` overrides the store, e.g. for a team server.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

PARENT_TAG = "mlflow.parentRunId"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def use_experiment(name: str) -> str:
    """Point mlflow at the project's store and experiment (created if missing); returns its id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # note: this also exports MLFLOW_TRACKING_URI to the environment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # In the project's own store, pin artifacts to <root>/mlruns (absolute), not to a path
        # relative to whatever directory the first run happened to start in.
        location = (project_root() / "mlruns").as_uri() if uri == default_tracking_uri() else None
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException:
            pass  # a parallel queued experiment created it first
        experiment = mlflow.get_experiment_by_name(name)
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


@contextmanager
def start_run(
    experiment: str, run_name: str, stage: str, parent_run_id: str | None = None, resume_run_id: str | None = None
) -> Iterator[str]:
    """Start a run in ``experiment``, tagged for DVC and git, or continue ``resume_run_id``
    when it still exists; yields the run id. A run whose block raises is marked FAILED
    rather than left RUNNING."""
    use_experiment(experiment)
    tags = standard_tags(stage)
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


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        mlflow.tracking.MlflowClient(tracking_uri()).log_artifact(run_id, str(path), artifact_path=artifact_path)


def run_exists(run_id: str) -> bool:
    try:
        mlflow.tracking.MlflowClient(tracking_uri()).get_run(run_id)
    except MlflowException:
        return False
    return True
