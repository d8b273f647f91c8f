"""A study: a replicated experiment design declared in one YAML file.

    name: schedules                  # letters, digits, - and _: names its tasks and folders
    factors:                         # params keys (dotted) -> the values to compare: every combination is a config
      schedule: [linear, cosine]
    seeds: [0, 1, 2, 3]              # train.seed of each replicate of every config
    fixed:                           # overrides every task gets (e.g. a shortened training for all alike)
      train.steps: 750
    executor: slurm                  # or local (DVC's queue on this machine)
    resources: {cpus: 2, gpus: 0, memory_gb: 8, time: "02:00:00", partition: gpu}
    results: {git_remote: origin, dvc_remote: team, mlflow: https://mlflow.lab.org}
    extend: {max_seeds: 12, step: 2} # how far `extend` may add replicates to unresolved configs
    targets: [train]                 # optional: only these dvc.yaml stages (and what they need); default all

Everything is checked when the file is read (:func:`load`), before anything is submitted:
keys and types here, and each task's params as the stages check them (:func:`tasks`).
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ddpmlab.config import ConfigError, Params, flatten
from ddpmlab.pipeline.presets import merged

EXECUTORS = ("local", "slurm")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}(:\d{2})?$")  # SLURM's [days-]hours:minutes[:seconds]
SEED_KEY = "train.seed"


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, the key and the value."""


@dataclass(frozen=True)
class Resources:
    """What one task asks the scheduler for."""

    cpus: int = 1
    gpus: int = 0
    memory_gb: float = 4.0
    time: str = "01:00:00"
    partition: str | None = None


@dataclass(frozen=True)
class Results:
    """Where a task's results go: its experiment (git), its outputs (DVC), its runs (MLflow)."""

    git_remote: str | None = None
    dvc_remote: str | None = None
    mlflow: str | None = None


@dataclass(frozen=True)
class Extension:
    """How far `study extend` may go: at most ``max_seeds`` per config, ``step`` more at a time."""

    max_seeds: int = 16
    step: int = 2


@dataclass(frozen=True)
class Study:
    name: str
    factors: dict[str, list[Any]]
    seeds: list[int]
    fixed: dict[str, Any] = field(default_factory=dict)
    executor: str = "local"
    resources: Resources = Resources()
    results: Results = Results()
    extend: Extension = Extension()
    targets: list[str] = field(default_factory=list)
    path: Path | None = None


@dataclass(frozen=True)
class Task:
    """One config at one seed: its name (the experiment's and the array task's) and its overrides."""

    name: str
    config: dict[str, Any]  # the factors' values: what tells configs apart
    seed: int
    overrides: dict[str, Any]  # dotted key -> value: fixed, config and seed

    @property
    def config_name(self) -> str:
        return self.name.rsplit("-s", 1)[0]


def _section(raw: dict, key: str, cls: type, where: str) -> Any:
    given = raw.get(key) or {}
    if not isinstance(given, dict):
        raise StudyError(f"{where}: {key} must be a mapping, got {given!r}")
    allowed = {f.name for f in cls.__dataclass_fields__.values()}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise StudyError(f"{where}: {key} has no {', '.join(map(repr, unknown))}: it takes {', '.join(sorted(allowed))}")
    defaults = cls()
    for name, value in given.items():
        wanted = type(getattr(defaults, name)) if getattr(defaults, name) is not None else str
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise StudyError(f"{where}: {key}.{name} = {value!r} must be a {wanted.__name__}")
    return cls(**given)


def parse(raw: Any, where: str = "study") -> Study:
    """A Study from the file's mapping; StudyError names the first key or value that is wrong."""
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: expected a mapping (name, factors, seeds, ...), got {type(raw).__name__}")
    allowed = {"name", "factors", "seeds", "fixed", "executor", "resources", "results", "extend", "targets"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise StudyError(f"{where}: unknown key {', '.join(map(repr, unknown))}: a study has {', '.join(sorted(allowed))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise StudyError(f"{where}: name = {name!r} must be 1-63 letters, digits, - or _ (it names tasks and folders)")
    factors = raw.get("factors") or {}
    if not isinstance(factors, dict) or not factors:
        raise StudyError(f"{where}: factors must map at least one params key to a list of values, got {factors!r}")
    for key, values in factors.items():
        if not isinstance(values, list) or not values or len({repr(v) for v in values}) != len(values):
            raise StudyError(f"{where}: factors.{key} = {values!r} must be a list of distinct values")
        if key == SEED_KEY:
            raise StudyError(f"{where}: {SEED_KEY} is not a factor: list replicates under seeds")
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise StudyError(f"{where}: seeds = {seeds!r} must be a list of training seeds (integers >= 0)")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}: seeds = {seeds!r} lists a seed twice")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise StudyError(f"{where}: fixed must be a mapping of params keys, got {fixed!r}")
    both = sorted(set(fixed) & set(factors)) + ([SEED_KEY] if SEED_KEY in fixed else [])
    if both:
        raise StudyError(f"{where}: {', '.join(both)} is both fixed and varied: keep it in one place")
    executor = raw.get("executor", "local")
    if executor not in EXECUTORS:
        raise StudyError(f"{where}: executor = {executor!r}: choose one of {', '.join(EXECUTORS)}")
    resources = _section(raw, "resources", Resources, where)
    _check_resources(resources, where)
    extension = _section(raw, "extend", Extension, where)
    if extension.max_seeds < len(seeds) or extension.step < 1:
        raise StudyError(f"{where}: extend = {extension} needs max_seeds >= the {len(seeds)} seeds listed and step >= 1")
    targets = raw.get("targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise StudyError(f"{where}: targets = {targets!r} must be a list of dvc.yaml stage names")
    results = _section(raw, "results", Results, where)
    return Study(name, dict(factors), list(seeds), dict(fixed), executor, resources, results, extension, list(targets))


def _check_resources(r: Resources, where: str) -> None:
    if r.cpus < 1 or r.gpus < 0 or r.memory_gb <= 0:
        raise StudyError(f"{where}: resources = {r}: cpus >= 1, gpus >= 0 and memory_gb > 0")
    if not TIME.match(r.time):
        raise StudyError(f"{where}: resources.time = {r.time!r} must be SLURM's [days-]hours:minutes[:seconds], e.g. 02:00:00")


def load(path: Path) -> Study:
    """The study in ``path``, checked (StudyError names the file and the problem)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise StudyError(f"cannot read the study file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise StudyError(f"{path} is not valid YAML: {e}") from None
    study = parse(raw, str(path))
    return Study(**{**study.__dict__, "path": path})


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{'train.steps': 5} -> {'train': {'steps': 5}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _near(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(value)).strip("_") or "x"


def tasks(study: Study, params_path: Path, seeds: list[int] | None = None) -> list[Task]:
    """Every config x seed of the study (``seeds``: these instead of the file's), each validated as
    the stages validate params (merged onto ``params_path``); ConfigError lists every bad task."""
    base = yaml.safe_load(Path(params_path).read_text()) or {}
    dvc_yaml = Path(params_path).parent / "dvc.yaml"
    if study.targets and dvc_yaml.is_file():
        stages = list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))
        unknown = [t for t in study.targets if t not in stages]
        if unknown:
            raise StudyError(f"targets: {', '.join(map(repr, unknown))} is not a stage of {dvc_yaml} (it has {', '.join(stages)})")
    present = set(flatten(base))
    missing = [k for k in [*study.fixed, *study.factors, SEED_KEY] if k not in present]
    if missing:  # `dvc exp run -S` sets only keys the params file has
        raise ConfigError([f"{k} is not a key of {params_path}: `dvc exp run -S` cannot set it" + _near(k, present) for k in missing])
    keys = list(study.factors)
    out, problems = [], []
    for values in itertools.product(*(study.factors[k] for k in keys)):
        config = dict(zip(keys, values))
        label = "-".join(f"{k.rsplit('.', 1)[-1]}_{_slug(v)}" for k, v in config.items())
        for seed in seeds if seeds is not None else study.seeds:
            overrides = {**study.fixed, **config, SEED_KEY: seed}
            task = Task(f"{study.name}-{label}-s{seed}", config, seed, overrides)
            try:
                Params.from_dict(merged(base, nested(overrides)))
            except ConfigError as e:
                problems += [f"task {task.name}: {p}" for p in e.problems]
            out.append(task)
    if problems:
        raise ConfigError(problems)
    return out
