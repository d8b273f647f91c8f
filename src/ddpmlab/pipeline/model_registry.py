"""Trained models in MLflow: the pyfunc the train stage logs and registers, and finding a model
again by run id or registry URI for `ddpmlab generate`.

A training run's model is the artifact folder ``model/`` (``generation.mlflow_model``). With
``tracking.register_model`` the train stage registers it as a new version of
``tracking.model_name`` (default: the experiment's name), tagged with the params that define it;
the evaluate stage adds the headline FID. Registration goes through the journal like every other
record (``tracking.register_model``), so a server that is down delays it and loses nothing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from ddpmlab.config import Params, config_id
from ddpmlab.model.defaults import default_settings
from ddpmlab.model.trained import ModelInfo, export_for_sampling, read_checkpoint
from ddpmlab.pipeline import code_deps, tracking

ARTIFACT_PATH = "model"  # the pyfunc's folder among a training run's artifacts
CHECKPOINT_ARTIFACT = "checkpoint/model.pt"  # runs from before models were logged have this only
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PYFUNC_CODE = "generation.mlflow_model"  # the model's code, run by MLflow at load time (models-from-code)


class ModelNotFound(LookupError):
    """A run id or models:/ URI that names no model on the tracking server; the message says what exists."""


def _bundle_code(folder: Path) -> Path:
    """Copy the ddpmlab modules the pyfunc imports (with their packages' ``__init__``) into
    ``folder/ddpmlab``: the model then loads where ddpmlab is not installed."""
    source = code_deps.module_path(PYFUNC_CODE)
    modules = {source, *code_deps.import_closure(source)}
    packages = {parent / "__init__.py" for path in modules for parent in path.parents if parent.is_relative_to(code_deps.PACKAGE_DIR)}
    for path in modules | packages:
        target = folder / "ddpmlab" / path.relative_to(code_deps.PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return folder / "ddpmlab"


def _param_type(value: Any) -> str:
    return {bool: "boolean", int: "long", float: "double", str: "string"}[type(value)]


def signature(info: ModelInfo) -> ModelSignature:
    """Seeds (and classes) in, uint8 images (N, C, H, W) out, the sampling settings as params with generate's defaults."""
    inputs = [ColSpec("long", "seed")] + ([ColSpec("long", "class_label", required=False)] if info.num_classes else [])
    params = ParamSchema([ParamSpec(name, _param_type(value), value) for name, value in default_settings(info.T).items()])
    return ModelSignature(Schema(inputs), Schema([TensorSpec(np.dtype(np.uint8), (-1, *info.image_shape))]), params)


def save_pyfunc(checkpoint: Path, folder: Path, work: Path) -> ModelInfo:
    """Write the MLflow model of ``checkpoint`` (a model.pt) to ``folder``; ``work`` is scratch space.

    The model's code is given as a file, not imported here: the train stage, which calls this,
    then depends on no sampler (editing one never retrains), and the folder holds no pickle."""
    weights = work / "ema.pt"
    export_for_sampling(checkpoint, weights)
    info, _ = read_checkpoint(weights)
    with warnings.catch_warnings():
        # MLflow's advice to give an input example (one would run predict, drawing images, at every save; the
        # signature is explicit) and its notes on its own type hints, which say nothing about this model.
        warnings.filterwarnings("ignore", message=".*(type hint|input example was not provided).*", category=UserWarning)
        mlflow.pyfunc.save_model(
            str(folder), python_model=str(code_deps.module_path(PYFUNC_CODE)), artifacts={"checkpoint": str(weights)},
            code_paths=[str(_bundle_code(work / "code"))], signature=signature(info),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", f"mlflow=={mlflow.__version__}"],
        )  # fmt: skip
    return info


def log_model(checkpoint: Path, run_id: str, params: Params) -> None:
    """Log ``checkpoint``'s MLflow model to training run ``run_id`` as ``model/`` and, with
    ``tracking.register_model``, register it as a new version of ``tracking.model_name``."""
    with tempfile.TemporaryDirectory(prefix="ddpmlab-pyfunc-") as tmp:
        folder = Path(tmp) / ARTIFACT_PATH
        info = save_pyfunc(checkpoint, folder, Path(tmp) / "work")
        tracking.log_artifacts(folder, ARTIFACT_PATH, run_id=run_id)  # a server: the journal copies the files before they go
    if params.tracking.register_model:
        s = info.summary()
        description = (f"DDPM ({s['schedule']} schedule, T = {s['T']}, {s['objective']} objective) on {s['data.source']} "
                       f"{info.image_size}x{info.image_size}, {info.step} training steps")  # fmt: skip
        tracking.register_model(run_id, params.tracking.registered_name, ARTIFACT_PATH, version_tags(info, config_id(params)), description)


def version_tags(info: ModelInfo, config: str) -> dict[str, str]:
    """The params that define a model version and its config id, as registry tags (searchable: tags.schedule = 'cosine')."""
    return {**{k: str(v) for k, v in info.summary().items()}, "config_id": config}


def _client() -> mlflow.tracking.MlflowClient:
    return mlflow.tracking.MlflowClient(tracking.tracking_uri())


def _registry_version(uri: str) -> Any:
    """The ModelVersion a ``models:/name/version``, ``models:/name/alias`` or ``models:/name@alias`` URI names."""
    body = uri.removeprefix("models:/")
    name, alias = body.split("@", 1) if "@" in body else (body.rsplit("/", 1) + [""])[:2]
    client = _client()
    if not name or not alias:
        raise ModelNotFound("not a registry URI; expected models:/<name>/<version>, models:/<name>/<alias> or models:/<name>@<alias>")
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        names = sorted(m.name for m in client.search_registered_models())
        known = f"registered models: {', '.join(names)}" if names else "no models are registered"
        raise ModelNotFound(f"no registered model {name!r} in {tracking.tracking_uri()} ({known})") from e
    try:
        return client.get_model_version(name, alias) if alias.isdigit() else client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        versions = client.search_model_versions(f"name = '{name}'")
        listed = ", ".join(sorted((str(v.version) for v in versions), key=int)) or "none"
        aliases = ", ".join(f"{a} -> {v.version}" for v in versions for a in v.aliases) or "none"
        raise ModelNotFound(f"model {name!r} has no version or alias {alias!r} (versions: {listed}; aliases: {aliases})") from e


def training_run_id(reference: str) -> str:
    """The training run a ``models:/`` URI's version came from; other references are returned as they are (run ids)."""
    return _registry_version(reference).run_id if reference.startswith("models:/") else reference


def _training_run(run_id: str) -> Any:
    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ModelNotFound(f"no MLflow run {run_id} in {tracking.tracking_uri()}") from e
    parent = run.data.params.get("train_run_id")  # an evaluation run: its model is its training run's
    return client.get_run(parent) if parent else run


def download(reference: str, destination: Path) -> tuple[Path, dict[str, Any]]:
    """Fetch the model a run id (``runs:/<id>`` too) or a registry URI names into ``destination``:
    (its MLflow model folder, or the checkpoint file of a run from before models were logged;
    what it is: run id, registered name, version, aliases)."""
    uri = tracking.tracking_uri()
    tracking.require_reachable(uri)
    if tracking.is_server(uri):
        tracking.check_credentials(uri, None)  # 401: a one-line error naming the user, not MLflow's traceback
    described: dict[str, Any]
    if reference.startswith("models:/"):
        version = _registry_version(reference)
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(destination)))
        described = {"registered_model": version.name, "version": int(version.version), "aliases": list(version.aliases), "run_id": version.run_id}
        return folder, described
    run_id = reference.removeprefix("runs:/").split("/")[0]
    if not RUN_ID.match(run_id):
        raise ModelNotFound("not a local folder or file, an MLflow run id (32 hex digits) or a models:/ URI")
    run = _training_run(run_id)
    described = {"run_id": run.info.run_id, "run_name": run.info.run_name}
    names = {a.path for a in _client().list_artifacts(run.info.run_id)}
    if ARTIFACT_PATH in names:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=ARTIFACT_PATH, dst_path=str(destination)))
        return folder, described
    if "checkpoint" in names:
        return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(destination))), described
    raise ModelNotFound(f"run {run.info.run_id} ({run.info.run_name}) has no model: it logged neither {ARTIFACT_PATH}/ nor {CHECKPOINT_ARTIFACT}")
