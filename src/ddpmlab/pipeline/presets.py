"""Presets: a YAML file of params.yaml overrides, turned into the `dvc exp run -S` command that applies them.

A preset is validated by merging it onto the project's params.yaml first, so a typo in it is
a config error before any experiment starts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from ddpmlab.config import ConfigError, Params


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, key by key at every nesting level."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(preset_path: Path, params_path: Path) -> tuple[dict[str, Any], Params]:
    """(the preset's overrides, the validated params they give); raises ConfigError naming bad keys."""
    overrides = yaml.safe_load(preset_path.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ConfigError([f"{preset_path}: expected a mapping of params.yaml keys, got {type(overrides).__name__}"])
    base = yaml.safe_load(params_path.read_text()) or {}
    return overrides, Params.from_dict(merged(base, overrides))


def set_arguments(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """['-S', 'train.lr=0.0002', '-S', 'model.channel_mult=[1,2,2,2]', ...]: one -S per leaf key,
    values written as YAML that `dvc exp run -S` parses back to the same type."""
    args = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            args += set_arguments(value, f"{name}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            args += ["-S", f"{name}={text}"]
    return args


def command_line(args: list[str]) -> str:
    return shlex.join(["dvc", "exp", "run", *args])
