"""Typed, validated view of params.yaml: frozen dataclasses, no I/O, no globals.

Imports no domain code: the allowed names and the samplers' options come from leaf modules
(``core.choices``, ``data.choices``, ``nn.choices``, ``nn.unet_config``, ``evaluation.choices``,
``sampling.options``), so every stage can read params without depending on what other stages run.

Every default equals the repository's params.yaml (``tests/test_config.py`` holds them equal),
so a key left out of a params file means the same as in the project's own.

``Params.from_dict`` checks every key and value before any stage does work. Problems are
collected and raised together as one :class:`ConfigError` whose lines each name the key,
the value and what is allowed (with a "did you mean" for misspelt keys).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ddpmlab.core.choices import OBJECTIVES, SAMPLE_SPACINGS, SCHEDULES, WEIGHTINGS
from ddpmlab.data.choices import SOURCES
from ddpmlab.evaluation.choices import FEATURE_EXTRACTORS
from ddpmlab.nn.choices import DEVICES, PRECISIONS
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.sampling.options import SAMPLER_OPTIONS, options_from


class ConfigError(ValueError):
    """One or more invalid params; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid params:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    root: str = "data/raw"
    image_size: int = 16
    channels: int | None = None
    test_fraction: float = 0.2
    hflip: bool = False
    skip_bad: bool = False


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    log_every: int = 25
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    weighting: str = "mse"
    min_snr_gamma: float = 5.0
    learn_variance: bool = False
    vlb_weight: float = 0.001
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_accum: int = 1
    tf32: bool = True
    processes: int = 1
    p_uncond: float = 0.1


@dataclass(frozen=True)
class SampleConfig:
    sampler: tuple[str, ...] = ("ddpm", "ddim", "dpmpp_2m")
    steps: tuple[int, ...] = (50, 10, 5, 4, 3)
    spacing: tuple[str, ...] = ("uniform", "quadratic")
    variance: str = "fixed_large"
    eta: float = 0.0
    clip_x0: bool = True
    num_samples: int = 500
    batch_size: int = 500
    seed: int = 1
    strip_images: int = 8
    strip_columns: int = 8
    precision: str = "auto"
    compile: bool = False
    guidance: tuple[float, ...] = (0.0, 1.0, 3.0)
    endpoint_images: int = 100


@dataclass(frozen=True)
class SearchConfig:
    samples: int = 64
    seed: int = 2
    max_runs: int = 100


@dataclass(frozen=True)
class ClassifierConfig:
    steps: int = 1200
    batch_size: int = 128
    lr: float = 3e-3
    min_accuracy: float = 0.75


@dataclass(frozen=True)
class EvaluateConfig:
    feature_extractor: str = "classifier"
    inception_weights: str | None = None
    batch_size: int = 500
    kid_subset_size: int = 100
    isc_splits: int = 10
    nll_images: int = 200
    snapshot_samples: int = 200
    snapshot_steps: int = 20
    bootstrap: int = 200


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "ddpmlab"
    register_model: bool = True
    model_name: str | None = None  # None: the experiment's name

    @property
    def registered_name(self) -> str:
        return self.model_name or self.experiment


@dataclass(frozen=True)
class Params:
    seed: int = 0
    schedule: str = "linear"
    T: int = 100
    objective: str = "eps"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Params:
        problems: list[str] = []
        params = _build(cls, raw, "", problems)
        if not problems:
            problems.extend(_check_values(params))
        if problems:
            raise ConfigError(problems)
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_dict(self) -> dict[str, Any]:
        """The params a trained model depends on (stored in its checkpoint, logged with its run)."""
        full = self.to_dict()
        return {k: full[k] for k in ("seed", "schedule", "T", "objective", "device", "data", "model", "train")}


# Bootstrap intervals hold N x N kernel matrices in memory (0.8 GB each at this N): above it, evaluate.bootstrap must be 0.
MAX_BOOTSTRAP_SAMPLES = 10_000

# Seeds whose change makes another replicate of the same experiment, not another experiment:
# training randomness (weight init, batch order, t and noise draws, dropout) and the sampling noise.
# The top-level `seed` is not one: it fixes the data split and the evaluation protocol.
REPLICATE_SEEDS = ("train.seed", "sample.seed")
# Keys that never tell two configs apart: where runs are logged, the sweep lists (every
# evaluation is keyed by its own sampler, spacing, steps and w) and the number of bootstrap
# resamples (it changes intervals, never a score).
NOT_CONFIG = ("tracking.", "sample.sampler", "sample.steps", "sample.spacing", "sample.guidance", "evaluate.bootstrap")


def config_params(params: Params) -> dict[str, Any]:
    """The flat params that make an experiment's config: every param but REPLICATE_SEEDS and NOT_CONFIG."""
    flat = flatten(params.to_dict())
    return {k: v for k, v in flat.items() if k not in REPLICATE_SEEDS and not k.startswith(NOT_CONFIG)}


def config_id(params: Params) -> str:
    """12 hex digits naming the config: replicates (runs that differ only in REPLICATE_SEEDS) share
    it, any other difference changes it. A SHA-256 of the sorted params as JSON, so it depends on
    neither key order nor the machine or process that computes it."""
    canonical = json.dumps(config_params(params), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists become comma-separated strings."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


# -- building and checking -----------------------------------------------------------------


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    section = prefix.rstrip(".") or "params.yaml"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{section}: expected a mapping of keys, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            problems.append(f"{prefix}{key}: unknown key{hint}")
    values = {}
    for name in known:
        if name not in raw:
            continue
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            values[name] = _build(expected, raw[name], f"{prefix}{name}.", problems)
        else:
            values[name] = _coerce(raw[name], expected, f"{prefix}{name}", problems)
    return cls(**{k: v for k, v in values.items() if v is not _INVALID})


_INVALID = object()


def _coerce(value: Any, expected: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):  # `X | None`: null is allowed
        (inner,) = [arg for arg in typing.get_args(expected) if arg is not type(None)]
        return None if value is None else _coerce(value, inner, key, problems)
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            value = [value]  # `dvc exp run -S model.attention_levels=1` gives a scalar
        items = [_coerce(v, item_type, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else tuple(items)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[expected]
    if not ok:
        problems.append(f"{key}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")
        return _INVALID
    return float(value) if expected is float else value


def _check_values(p: Params) -> list[str]:
    problems: list[str] = []

    def require(condition: bool, key: str, value: Any, allowed: str) -> None:
        if not condition:
            problems.append(f"{key}: got {value!r}; allowed: {allowed}")

    def one_of(key: str, value: Any, choices: Any) -> None:
        require(value in choices, key, value, ", ".join(sorted(choices)))

    one_of("schedule", p.schedule, SCHEDULES)
    one_of("objective", p.objective, OBJECTIVES)
    one_of("device", p.device, DEVICES)
    one_of("data.source", p.data.source, SOURCES)
    require(p.data.channels in (None, 1, 3), "data.channels", p.data.channels, "null (the source's own), 1 (grayscale) or 3 (RGB)")
    require(bool(p.data.root.strip()), "data.root", p.data.root, "a directory path (dataset files, or the images of data.source=folder)")
    for key, values, allowed in (("sample.sampler", p.sample.sampler, SAMPLER_OPTIONS), ("sample.spacing", p.sample.spacing, SAMPLE_SPACINGS)):
        require(
            len(values) > 0 and all(v in allowed for v in values) and len(set(values)) == len(values),
            key, list(values), f"a non-empty list of distinct names among {', '.join(allowed)}",
        )  # fmt: skip
    for options in SAMPLER_OPTIONS.values():  # every sampler's options, swept or not: a bad value never waits in params.yaml
        problems.extend(problem for problem in options_from(options, p.sample).problems() if problem not in problems)
    one_of("train.weighting", p.train.weighting, WEIGHTINGS)
    one_of("evaluate.feature_extractor", p.evaluate.feature_extractor, FEATURE_EXTRACTORS)
    one_of("train.precision", p.train.precision, PRECISIONS)
    one_of("sample.precision", p.sample.precision, PRECISIONS)
    require(
        p.train.grad_accum >= 1 and p.train.batch_size % p.train.grad_accum == 0,
        "train.grad_accum",
        p.train.grad_accum,
        f"an integer >= 1 that divides train.batch_size = {p.train.batch_size} (micro-batches of batch_size / grad_accum)",
    )
    require(
        p.train.processes >= 1 and p.train.grad_accum >= 1 and p.train.batch_size % (p.train.processes * p.train.grad_accum) == 0,
        "train.processes",
        p.train.processes,
        f"an integer >= 1 such that processes x train.grad_accum = {p.train.processes} x {p.train.grad_accum} divides "
        f"train.batch_size = {p.train.batch_size} (each process trains on an equal share of every batch)",
    )
    require(
        1 <= p.evaluate.isc_splits <= p.sample.num_samples,
        "evaluate.isc_splits",
        p.evaluate.isc_splits,
        f"an integer in [1, sample.num_samples = {p.sample.num_samples}]",
    )
    require(0 <= p.classifier.min_accuracy <= 1, "classifier.min_accuracy", p.classifier.min_accuracy, "a fraction in [0, 1]")
    require(p.T >= 1, "T", p.T, "an integer >= 1")
    require(
        p.sample.variance != "learned_range" or p.train.learn_variance,
        "sample.variance",
        p.sample.variance,
        "fixed_large or fixed_small, or learned_range together with train.learn_variance: true",
    )
    steps = list(p.sample.steps)
    require(
        len(steps) > 0 and all(1 <= s <= p.T for s in steps) and len(set(steps)) == len(steps),
        "sample.steps",
        steps,
        f"a non-empty list of distinct step counts in [1, T = {p.T}]",
    )
    require(0 <= p.train.p_uncond <= 1, "train.p_uncond", p.train.p_uncond, "a probability in [0, 1] (0.1 in Ho & Salimans 2022)")
    guidance = list(p.sample.guidance)
    require(
        len(guidance) > 0 and all(w >= 0 for w in guidance) and len(set(guidance)) == len(guidance),
        "sample.guidance",
        guidance,
        "a non-empty list of distinct guidance weights w >= 0 (0 = plain conditional sampling)",
    )
    require(p.train.min_snr_gamma > 0, "train.min_snr_gamma", p.train.min_snr_gamma, "a number > 0 (5 in Hang et al. 2023)")
    require(p.train.vlb_weight >= 0, "train.vlb_weight", p.train.vlb_weight, "a number >= 0 (0.001 in Improved DDPM)")
    require(p.evaluate.snapshot_samples >= 0, "evaluate.snapshot_samples", p.evaluate.snapshot_samples, "an integer >= 0 (0 skips the curve)")
    require(1 <= p.evaluate.snapshot_steps <= p.T, "evaluate.snapshot_steps", p.evaluate.snapshot_steps, f"an integer in [1, T = {p.T}]")
    require(p.evaluate.bootstrap == 0 or p.evaluate.bootstrap >= 20, "evaluate.bootstrap", p.evaluate.bootstrap,
            "0 (no intervals) or an integer >= 20 (resamples per score; 2.5% tails need tens of them)")  # fmt: skip
    require(p.evaluate.bootstrap == 0 or p.sample.num_samples <= MAX_BOOTSTRAP_SAMPLES, "evaluate.bootstrap", p.evaluate.bootstrap,
            f"0 when sample.num_samples = {p.sample.num_samples} > {MAX_BOOTSTRAP_SAMPLES}: the resampled KID keeps N x N kernel "
            f"matrices ({8 * p.sample.num_samples**2 / 1e9:.0f} GB each at this N)")  # fmt: skip
    require(p.sample.endpoint_images >= 0, "sample.endpoint_images", p.sample.endpoint_images,
            "an integer >= 0 (images with an endpoint error, at most sample.num_samples are used; 0 = none)")  # fmt: skip
    require(p.search.max_runs >= 0, "search.max_runs", p.search.max_runs, "an integer >= 0 (0 = the best closed-form grid, no descent)")
    require(p.evaluate.nll_images >= 0, "evaluate.nll_images", p.evaluate.nll_images, "an integer >= 0 (0 skips the NLL)")
    require(0 < p.data.test_fraction < 1, "data.test_fraction", p.data.test_fraction, "a fraction in (0, 1)")
    for key, value in [
        ("train.steps", p.train.steps),
        ("train.batch_size", p.train.batch_size),
        ("train.log_every", p.train.log_every),
        ("train.checkpoint_every", p.train.checkpoint_every),
        ("train.keep_checkpoints", p.train.keep_checkpoints),
        ("sample.num_samples", p.sample.num_samples),
        ("sample.batch_size", p.sample.batch_size),
        ("sample.strip_columns", p.sample.strip_columns),
        ("search.samples", p.search.samples),
        ("classifier.steps", p.classifier.steps),
        ("classifier.batch_size", p.classifier.batch_size),
        ("evaluate.batch_size", p.evaluate.batch_size),
        ("model.channels", p.model.channels),
        ("model.num_res_blocks", p.model.num_res_blocks),
        ("model.norm_groups", p.model.norm_groups),
    ]:
        require(value >= 1, key, value, "an integer >= 1")
    require(p.train.warmup_steps >= 0, "train.warmup_steps", p.train.warmup_steps, "an integer >= 0")
    require(p.sample.strip_images >= 0, "sample.strip_images", p.sample.strip_images, "an integer >= 0")
    for key, value in [("train.lr", p.train.lr), ("classifier.lr", p.classifier.lr), ("train.grad_clip", p.train.grad_clip)]:
        require(value > 0, key, value, "a number > 0")
    require(p.train.weight_decay >= 0, "train.weight_decay", p.train.weight_decay, "a number >= 0")
    require(0 <= p.train.ema_decay < 1, "train.ema_decay", p.train.ema_decay, "a number in [0, 1)")
    require(0 <= p.model.dropout < 1, "model.dropout", p.model.dropout, "a number in [0, 1)")
    require(
        2 <= p.evaluate.kid_subset_size <= p.sample.num_samples,
        "evaluate.kid_subset_size",
        p.evaluate.kid_subset_size,
        f"an integer in [2, sample.num_samples = {p.sample.num_samples}]",
    )
    name = p.tracking.registered_name
    require(bool(name.strip()) and not set(name) & set("/@:"), "tracking.model_name", p.tracking.model_name,
            "null (the experiment's name) or a name without '/', '@' or ':' (they would break models:/<name>@<alias> URIs)")  # fmt: skip
    problems.extend(_check_architecture(p.model, p.data.image_size))
    return problems


def _check_architecture(m: UNetConfig, image_size: int) -> list[str]:
    problems = []
    levels = len(m.channel_mult)
    if levels == 0 or any(c < 1 for c in m.channel_mult):
        problems.append(f"model.channel_mult: got {list(m.channel_mult)}; allowed: a non-empty list of integers >= 1")
        return problems
    if image_size < 1 or image_size % 2 ** (levels - 1):
        problems.append(
            f"data.image_size: got {image_size}; allowed: a positive multiple of {2 ** (levels - 1)} "
            f"(the U-Net halves it {levels - 1} times for model.channel_mult={list(m.channel_mult)})"
        )
        return problems
    bad_groups = sorted({m.channels * c for c in m.channel_mult if (m.channels * c) % m.norm_groups})
    if bad_groups:
        problems.append(f"model.norm_groups: got {m.norm_groups}; allowed: a divisor of every level's width {bad_groups}")
    levels_at = ", ".join(f"{i} ({size}x{size})" for i, size in enumerate(m.resolutions(image_size)))
    if any(level not in range(levels) for level in m.attention_levels):
        problems.append(f"model.attention_levels: got {list(m.attention_levels)}; allowed: levels among {levels_at} at data.image_size={image_size}")
    return problems
