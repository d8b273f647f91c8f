"""Logins of an MLflow server run with `--app-name basic-auth`, through its REST API as the admin
user: users, their permission on an experiment and its registered model, the experiments themselves."""

from __future__ import annotations

import os

import requests

from ddpmlab.pipeline.journal import EXPERIMENT_KIND  # the experiments the admin creates open in the model-training view

ADMIN = "admin"
CERT_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"  # MLflow's own: the CA bundle its clients verify the server with
PERMISSIONS = ("READ", "EDIT", "MANAGE")
TIMEOUT_S = 30
# MLflow's error codes of "no such user / experiment / grant" and "it exists already"
MISSING, EXISTS = "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS"
GET_USER = "/api/2.0/mlflow/users/get"
CREATE_USER = "/api/2.0/mlflow/users/create"
DELETE_USER = "/api/2.0/mlflow/users/delete"
GET_EXPERIMENT = "/api/2.0/mlflow/experiments/get-by-name"
CREATE_EXPERIMENT = "/api/2.0/mlflow/experiments/create"
GRANT = "/api/3.0/mlflow/users/permissions/grant"  # MLflow 3 with unified per-user grants
REVOKE = "/api/3.0/mlflow/users/permissions/revoke"
EXPERIMENT_PERMISSION = "/api/2.0/mlflow/experiments/permissions"  # older MLflow 3: .../create, .../update
MODEL_PERMISSION = "/api/2.0/mlflow/registered-models/permissions"
CREATE_REGISTERED_MODEL = "/api/2.0/mlflow/registered-models/create"


class AccountError(RuntimeError):
    """An MLflow admin call was refused or failed."""


def _error(response: requests.Response) -> tuple[str, str]:
    """MLflow's (error_code, message) of a failed call; ("", text) when the body is not MLflow's JSON."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()[:300]
    return str(body.get("error_code", "")), str(body.get("message", body))


def _call(uri: str, admin_password: str, method: str, path: str, *, ok: str = "", **kwargs) -> requests.Response | None:
    """One request as the admin; None when it fails with MLflow error code ``ok``."""
    try:
        response = requests.request(method, f"{uri.rstrip('/')}{path}", auth=(ADMIN, admin_password), timeout=TIMEOUT_S,
                                    verify=os.environ.get(CERT_ENV) or True, **kwargs)  # fmt: skip
    except requests.RequestException as e:
        raise AccountError(f"MLflow server {uri} is not reachable: {e}") from e
    if response.status_code == 401:
        raise AccountError(f"MLflow server {uri} refused the {ADMIN!r} login: a wrong DDPMLAB_TEAM_ADMIN_PASSWORD?")
    if response.ok:
        return response
    code, message = _error(response)
    if ok and code == ok:
        return None
    raise AccountError(" ".join(filter(None, [f"{method} {path} on {uri}: HTTP {response.status_code}", code, message])))


def check_admin(uri: str, admin_password: str) -> None:
    """Fail unless ``admin_password`` logs in as the admin user."""
    _call(uri, admin_password, "GET", GET_USER, params={"username": ADMIN})


def user_exists(uri: str, admin_password: str, username: str) -> bool:
    return _call(uri, admin_password, "GET", GET_USER, params={"username": username}, ok=MISSING) is not None


def create_user(uri: str, admin_password: str, username: str, password: str) -> bool:
    """Create a login; False (and the password unchanged) when ``username`` exists already.
    MLflow wants passwords of 12 characters or more."""
    if not username:
        raise ValueError("empty username")
    login = {"username": username, "password": password}
    return _call(uri, admin_password, "POST", CREATE_USER, json=login, ok=EXISTS) is not None


def delete_user(uri: str, admin_password: str, username: str) -> bool:
    """Delete a login and its permissions; False when there was none."""
    if username == ADMIN:
        raise ValueError(f"the {ADMIN!r} login cannot be deleted: the stack needs it")
    return _call(uri, admin_password, "DELETE", DELETE_USER, json={"username": username}, ok=MISSING) is not None


def experiment_id(uri: str, admin_password: str, name: str) -> str | None:
    response = _call(uri, admin_password, "GET", GET_EXPERIMENT, params={"experiment_name": name}, ok=MISSING)
    return None if response is None else response.json()["experiment"]["experiment_id"]


def ensure_experiment(uri: str, admin_password: str, name: str) -> str:
    """The id of experiment ``name``, created by the admin (tagged for the model-training view) if missing."""
    found = experiment_id(uri, admin_password, name)
    if found is not None:
        return found
    key, kind = EXPERIMENT_KIND
    tags = [{"key": key, "value": kind}]
    response = _call(uri, admin_password, "POST", CREATE_EXPERIMENT, json={"name": name, "tags": tags}, ok=EXISTS)
    if response is None:  # created in between by someone else
        return experiment_id(uri, admin_password, name)
    return response.json()["experiment_id"]


def normalise_permission(permission: str) -> str:
    value = str(permission).strip().upper()
    if value not in PERMISSIONS:
        raise ValueError(f"permission {permission!r} is not one of {', '.join(PERMISSIONS)} (any case)")
    return value


def ensure_registered_model(uri: str, admin_password: str, name: str) -> None:
    """Create registered model ``name`` as the admin if missing: the train stage registers its models
    under the experiment's name (tracking.model_name: null), and a permission needs the model to exist."""
    body = {"name": name, "description": "DDPM models trained by ddpmlab; every version is one training run"}
    _call(uri, admin_password, "POST", CREATE_REGISTERED_MODEL, json=body, ok=EXISTS)


def grant(uri: str, admin_password: str, username: str, experiment_name: str, permission: str) -> None:
    """Give ``username`` ``permission`` (READ, EDIT or MANAGE) on experiment ``experiment_name`` and on
    the registered model of the same name (created if missing), replacing what it had on them:
    EDIT lets a user log runs and register their models as new versions."""
    value = normalise_permission(permission)
    found = experiment_id(uri, admin_password, experiment_name)
    if found is None:
        raise AccountError(
            f"no experiment {experiment_name!r} on {uri}: `ddpmlab team up --experiment {experiment_name}` makes it"
        )
    if not user_exists(uri, admin_password, username):
        raise AccountError(f"no user {username!r} on {uri}: create it first (`ddpmlab team user {username} ...`)")
    ensure_registered_model(uri, admin_password, experiment_name)
    _grant(uri, admin_password, username, "experiment", found, value, (EXPERIMENT_PERMISSION, {"experiment_id": found}))
    _grant(uri, admin_password, username, "registered_model", experiment_name, value, (MODEL_PERMISSION, {"name": experiment_name}))


def _grant(uri: str, admin_password: str, username: str, resource_type: str, resource_id: str, value: str, legacy: tuple[str, dict]) -> None:
    """One grant on one resource; ``legacy`` = (the per-resource permissions endpoint, its resource key)
    for an MLflow 3 without the unified grant API."""
    target = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    try:
        # One grant per (user, resource): to change it, revoke it and grant anew (in between,
        # the user has the server's default permission, READ).
        if _call(uri, admin_password, "POST", GRANT, json=target | {"permission": value}, ok=EXISTS) is None:
            _call(uri, admin_password, "POST", REVOKE, json=target, ok=MISSING)
            _call(uri, admin_password, "POST", GRANT, json=target | {"permission": value})
        return
    except AccountError as e:
        if "HTTP 404" not in str(e) or MISSING in str(e):
            raise  # not "no such endpoint"
    # An older MLflow 3 without the grant API: per-resource permissions, created once, then updated.
    endpoint, key = legacy
    body = {**key, "username": username, "permission": value}
    if _call(uri, admin_password, "POST", f"{endpoint}/create", json=body, ok=EXISTS) is None:
        _call(uri, admin_password, "PATCH", f"{endpoint}/update", json=body)
