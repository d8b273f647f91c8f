"""Helpers shared by the stage scripts: reading params, writing small files, failing clearly."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
import yaml

from ddpmlab.config import ConfigError, Params

# Exit status of every ddpmlab command when params.yaml is invalid (sysexits' EX_CONFIG).
EXIT_CONFIG_ERROR = 78


def read_params(path: str | Path) -> Params:
    """Parse and validate params.yaml; exit with EXIT_CONFIG_ERROR listing every problem.

    The one implementation behind every stage and `ddpmlab validate`: an unreadable file or
    invalid YAML is a configuration error too, so a caller never sees a traceback for one."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
        return Params.from_dict(raw if raw is not None else {})
    except OSError as e:
        click.echo(f"error: cannot read params file {path}: {e.strerror or e}", err=True)
    except yaml.YAMLError as e:
        click.echo(f"error: {path} is not valid YAML: {e}", err=True)
    except ConfigError as e:
        click.echo(f"error: {path}: {e}", err=True)
    raise SystemExit(EXIT_CONFIG_ERROR)


def params_option(fn: Callable) -> Callable:
    return click.option(
        "--params",
        "params_path",
        default="params.yaml",
        show_default=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Params file (validated before any work starts).",
    )(fn)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file atomically (temporary file + rename) so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise click.ClickException(f"missing {path}: run the stage that produces it first (dvc repro)")
    return json.loads(path.read_text())


def stage_errors(fn: Callable) -> Callable:
    """Turn the library's expected failures into one-line errors instead of tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if isinstance(e, (FileNotFoundError, *_expected_errors())):
                raise click.ClickException(str(e)) from e
            raise

    return wrapper


# The library's expected failures, by the module that defines each. A stage can only raise those of
# modules it has loaded, so they are looked up in sys.modules rather than imported: importing them
# here would load mlflow (~2 s) into stages that never track (prepare), and would make every stage
# run (and, in dvc.yaml, depend on) the training code.
EXPECTED_ERRORS = {
    "ddpmlab.model.checkpoint": "CheckpointError",
    "ddpmlab.evaluation.classifier": "ClassifierTooWeak",
    "ddpmlab.data.image_set": "DataUnavailable",
    "ddpmlab.evaluation.inception": "InceptionWeightsUnavailable",
    "ddpmlab.pipeline.tracking": "TrackingError",
    "ddpmlab.training.loop": "TrainingDiverged",
}


def _expected_errors() -> tuple[type[Exception], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in EXPECTED_ERRORS.items() if module in sys.modules)
