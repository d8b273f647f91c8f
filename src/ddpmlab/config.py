"""Typed, validated view of params.yaml: frozen dataclasses, no I/O, no globals.

Imports no domain code: the allowed names and the samplers' options come from leaf modules
(``core.math_names``, ``data.source_names``, ``nn.hardware_names``, ``nn.unet_config``, ``evaluation.extractor_names``, ``evaluation.correction_names``,
``sampling.catalog``), so every stage can read params without depending on what other stages run.

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

from ddpmlab.core.math_names import OBJECTIVES, SAMPLE_SPACINGS, SCHEDULES, WEIGHTINGS
from ddpmlab.data.source_names import SOURCES
from ddpmlab.evaluation.correction_names import CORRECTIONS
from ddpmlab.evaluation.extractor_names import FEATURE_EXTRACTORS
from ddpmlab.nn.hardware_names import AUTO, DEVICES, PRECISIONS
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.sampling.catalog import SAMPLER_CARDS


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
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
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
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
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
    jackknife_groups: int = 50
    correction: str = "bh"


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


# Intervals recompute KID from N x N kernel sums (0.8 GB of kernel per reference at this N): above it, evaluate.jackknife_groups must be 0.
MAX_INTERVAL_SAMPLES = 10_000

# Seeds whose change makes another replicate of the same experiment, not another experiment:
# training randomness (weight init, batch order, t and noise draws, dropout) and the sampling noise.
# The top-level `seed` is not one: it fixes the data split and the evaluation protocol.
REPLICATE_SEEDS = ("train.seed", "sample.seed")
# Keys that never tell two configs apart: where runs are logged, the sweep lists (every
# evaluation is keyed by its own sampler, spacing, steps and w) and the number of jackknife
# groups (it changes intervals, never a score).
NOT_CONFIG = ("tracking.", "sample.sampler", "sample.steps", "sample.spacing", "sample.guidance", "evaluate.jackknife_groups",
              "evaluate.correction")  # fmt: skip


def config_params(params: Params) -> dict[str, Any]:
    """The flat params that make an experiment's config: every param but REPLICATE_SEEDS and NOT_CONFIG."""
    flat = flatten(params.to_dict())
    return {k: v for k, v in flat.items() if k not in REPLICATE_SEEDS and not k.startswith(NOT_CONFIG)}


def config_label(params: Params) -> str:
    """The config in words for the MLflow UI: its params that differ from the defaults (``Params()``, the
    shipped params.yaml), in the order params.yaml lists them, e.g. "schedule=sigmoid T=1000"; "defaults"
    when none does. Replicates share it, like the id; unlike the id it is readable, not unique."""
    defaults = config_params(Params())
    changed = [f"{k}={v}" for k, v in config_params(params).items() if defaults.get(k) != v]
    return " ".join(changed) or "defaults"


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
    if origin in (typing.Union, types.UnionType):  # `X | None`: null is allowed; `bool | str`: either
        args = typing.get_args(expected)
        inner = [arg for arg in args if arg is not type(None)]
        if value is None and type(None) in args:
            return None
        if len(inner) == 1:
            return _coerce(value, inner[0], key, problems)
        for kind in inner:
            if _is_a(value, kind):
                return value
        problems.append(f"{key}: expected {' or '.join(k.__name__ for k in inner)}, got {value!r} ({type(value).__name__})")
        return _INVALID
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            value = [value]  # `dvc exp run -S model.attention_levels=1` gives a scalar
        items = [_coerce(v, item_type, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else tuple(items)
    if not _is_a(value, expected):
        problems.append(f"{key}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")
        return _INVALID
    return float(value) if expected is float else value


def _is_a(value: Any, kind: type) -> bool:
    """Whether a YAML value has the type a key expects (a bool is not a number here, an int is a float)."""
    return {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]


class _Problems(list):
    """Problem lines, one per invalid value, and the ways a check adds one."""

    def require(self, condition: bool, key: str, value: Any, allowed: str) -> None:
        if not condition:
            self.append(f"{key}: got {value!r}; allowed: {allowed}")

    def one_of(self, key: str, value: Any, choices: Any) -> None:
        self.require(value in choices, key, value, ", ".join(sorted(choices)))

    def switch(self, key: str, value: Any) -> None:
        """true, false, or auto (measured on the machine at hand)."""
        self.require(isinstance(value, bool) or value == AUTO, key, value, "auto, true, false")

    def at_least(self, key: str, value: int, minimum: int) -> None:
        self.require(value >= minimum, key, value, f"an integer >= {minimum}")


def _check_values(p: Params) -> list[str]:
    """Every invalid value of ``p`` (whose keys and types are already right), one line each, section by section
    in params.yaml's order. A check that relates two sections lives in the section of the key it reports."""
    return [
        *_top_level_problems(p),
        *_data_problems(p.data),
        *_model_problems(p.model, p.data.image_size),
        *_train_problems(p.train),
        *_sample_problems(p.sample, p.T, p.train.learn_variance),
        *_search_problems(p.search),
        *_classifier_problems(p.classifier),
        *_evaluate_problems(p.evaluate, p.T, p.sample.num_samples),
        *_tracking_problems(p.tracking),
    ]


def _top_level_problems(p: Params) -> list[str]:
    """The keys above the sections: the diffusion (schedule, T, objective) and the device (seed takes any integer)."""
    problems = _Problems()
    problems.one_of("schedule", p.schedule, SCHEDULES)
    problems.at_least("T", p.T, 1)
    problems.one_of("objective", p.objective, OBJECTIVES)
    problems.one_of("device", p.device, DEVICES)
    return problems


def _data_problems(d: DataConfig) -> list[str]:
    """The dataset and its split (data.image_size is the model's check: the U-Net must be able to halve it)."""
    problems = _Problems()
    problems.one_of("data.source", d.source, SOURCES)
    problems.require(bool(d.root.strip()), "data.root", d.root,
                     "a directory path (dataset files, or the images of data.source=folder)")  # fmt: skip
    problems.require(d.channels in (None, 1, 3), "data.channels", d.channels, "null (the source's own), 1 (grayscale) or 3 (RGB)")
    problems.require(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "a fraction in (0, 1)")
    return problems


def _model_problems(m: UNetConfig, image_size: int) -> list[str]:
    """The U-Net's sizes, then that it fits the images: valid channel_mult, an image size it can halve, norm groups
    and attention levels that exist (each of these only once the ones before it hold)."""
    problems = _Problems()
    problems.at_least("model.channels", m.channels, 1)
    problems.at_least("model.num_res_blocks", m.num_res_blocks, 1)
    problems.require(0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")
    problems.at_least("model.norm_groups", m.norm_groups, 1)
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
    widths = sorted({m.channels * c for c in m.channel_mult})
    bad_groups = [w for w in widths if m.norm_groups and w % m.norm_groups]  # 0 groups: the ">= 1" line says so
    if bad_groups:
        problems.append(f"model.norm_groups: got {m.norm_groups}; allowed: a divisor of every level's width {bad_groups}")
    levels_at = ", ".join(f"{i} ({size}x{size})" for i, size in enumerate(m.resolutions(image_size)))
    if any(level not in range(levels) for level in m.attention_levels):
        problems.append(
            f"model.attention_levels: got {list(m.attention_levels)}; "
            f"allowed: levels among {levels_at} at data.image_size={image_size}"
        )
    return problems


def _train_problems(t: TrainConfig) -> list[str]:
    """Training: its length and optimiser, logs and checkpoints, the loss's weights, precision, how every batch is split."""
    problems = _Problems()
    problems.at_least("train.steps", t.steps, 1)
    problems.at_least("train.batch_size", t.batch_size, 1)
    problems.require(t.lr > 0, "train.lr", t.lr, "a number > 0")
    problems.at_least("train.warmup_steps", t.warmup_steps, 0)
    problems.require(t.grad_clip > 0, "train.grad_clip", t.grad_clip, "a number > 0")
    problems.require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    problems.require(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "a number in [0, 1)")
    problems.at_least("train.log_every", t.log_every, 1)
    problems.at_least("train.checkpoint_every", t.checkpoint_every, 1)
    problems.at_least("train.keep_checkpoints", t.keep_checkpoints, 1)
    problems.one_of("train.weighting", t.weighting, WEIGHTINGS)
    problems.require(t.min_snr_gamma > 0, "train.min_snr_gamma", t.min_snr_gamma, "a number > 0 (5 in Hang et al. 2023)")
    problems.require(t.vlb_weight >= 0, "train.vlb_weight", t.vlb_weight, "a number >= 0 (0.001 in Improved DDPM)")
    problems.one_of("train.precision", t.precision, PRECISIONS)
    problems.switch("train.channels_last", t.channels_last)
    problems.switch("train.compile", t.compile)
    problems.require(
        t.grad_accum >= 1 and t.batch_size % t.grad_accum == 0,
        "train.grad_accum",
        t.grad_accum,
        f"an integer >= 1 that divides train.batch_size = {t.batch_size} (micro-batches of batch_size / grad_accum)",
    )
    problems.require(
        t.processes >= 1 and t.grad_accum >= 1 and t.batch_size % (t.processes * t.grad_accum) == 0,
        "train.processes",
        t.processes,
        f"an integer >= 1 such that processes x train.grad_accum = {t.processes} x {t.grad_accum} divides "
        f"train.batch_size = {t.batch_size} (each process trains on an equal share of every batch)",
    )
    problems.require(0 <= t.p_uncond <= 1, "train.p_uncond", t.p_uncond, "a probability in [0, 1] (0.1 in Ho & Salimans 2022)")
    return problems


def _sample_problems(s: SampleConfig, T: int, learn_variance: bool) -> list[str]:
    """The sweep lists (samplers, spacings, step counts up to T, guidance weights), every sampler's options, the budget;
    sample.variance learned_range needs a model trained with train.learn_variance."""
    problems = _Problems()
    for key, names, allowed in (("sample.sampler", s.sampler, SAMPLER_CARDS), ("sample.spacing", s.spacing, SAMPLE_SPACINGS)):
        problems.require(len(names) > 0 and all(n in allowed for n in names) and len(set(names)) == len(names),
                         key, list(names), f"a non-empty list of distinct names among {', '.join(allowed)}")  # fmt: skip
    steps = list(s.steps)
    problems.require(len(steps) > 0 and all(1 <= n <= T for n in steps) and len(set(steps)) == len(steps),
                     "sample.steps", steps, f"a non-empty list of distinct step counts in [1, T = {T}]")  # fmt: skip
    # Every sampler's options, swept or not (a bad value never waits in params.yaml); an option shared by samplers is told once.
    problems.extend(dict.fromkeys(line for card in SAMPLER_CARDS.values() for line in card.options_from(s).problems()))
    problems.require(s.variance != "learned_range" or learn_variance, "sample.variance", s.variance,
                     "fixed_large or fixed_small, or learned_range together with train.learn_variance: true")  # fmt: skip
    problems.at_least("sample.num_samples", s.num_samples, 1)
    problems.at_least("sample.batch_size", s.batch_size, 1)
    problems.at_least("sample.strip_images", s.strip_images, 0)
    problems.at_least("sample.strip_columns", s.strip_columns, 1)
    problems.one_of("sample.precision", s.precision, PRECISIONS)
    problems.switch("sample.channels_last", s.channels_last)
    problems.switch("sample.compile", s.compile)
    problems.require(
        s.endpoint_images >= 0,
        "sample.endpoint_images",
        s.endpoint_images,
        "an integer >= 0 (images with an endpoint error, at most sample.num_samples are used; 0 = none)",
    )
    guidance = list(s.guidance)
    problems.require(len(guidance) > 0 and all(w >= 0 for w in guidance) and len(set(guidance)) == len(guidance),
                     "sample.guidance", guidance,
                     "a non-empty list of distinct guidance weights w >= 0 (0 = plain conditional sampling)")  # fmt: skip
    return problems


def _search_problems(search: SearchConfig) -> list[str]:
    """The step-grid search: images per candidate grid and how many descent runs."""
    problems = _Problems()
    problems.at_least("search.samples", search.samples, 1)
    problems.require(search.max_runs >= 0, "search.max_runs", search.max_runs,
                     "an integer >= 0 (0 = the best closed-form grid, no descent)")  # fmt: skip
    return problems


def _classifier_problems(c: ClassifierConfig) -> list[str]:
    """The dataset classifier's training and the accuracy it must reach."""
    problems = _Problems()
    problems.at_least("classifier.steps", c.steps, 1)
    problems.at_least("classifier.batch_size", c.batch_size, 1)
    problems.require(c.lr > 0, "classifier.lr", c.lr, "a number > 0")
    problems.require(0 <= c.min_accuracy <= 1, "classifier.min_accuracy", c.min_accuracy, "a fraction in [0, 1]")
    return problems


def _evaluate_problems(e: EvaluateConfig, T: int, num_samples: int) -> list[str]:
    """The protocol: the feature extractor, the KID and IS splits (at most sample.num_samples), the NLL, the snapshot
    curve (steps up to T) and the jackknife (groups at most the images; kernel matrices of sample.num_samples squared)."""
    problems = _Problems()
    problems.one_of("evaluate.feature_extractor", e.feature_extractor, FEATURE_EXTRACTORS)
    problems.one_of("evaluate.correction", e.correction, CORRECTIONS)
    problems.at_least("evaluate.batch_size", e.batch_size, 1)
    problems.require(2 <= e.kid_subset_size <= num_samples, "evaluate.kid_subset_size", e.kid_subset_size,
                     f"an integer in [2, sample.num_samples = {num_samples}]")  # fmt: skip
    problems.require(1 <= e.isc_splits <= num_samples, "evaluate.isc_splits", e.isc_splits,
                     f"an integer in [1, sample.num_samples = {num_samples}]")  # fmt: skip
    problems.require(e.nll_images >= 0, "evaluate.nll_images", e.nll_images, "an integer >= 0 (0 skips the NLL)")
    problems.require(e.snapshot_samples >= 0, "evaluate.snapshot_samples", e.snapshot_samples,
                     "an integer >= 0 (0 skips the curve)")  # fmt: skip
    problems.require(1 <= e.snapshot_steps <= T, "evaluate.snapshot_steps", e.snapshot_steps, f"an integer in [1, T = {T}]")
    problems.require(e.jackknife_groups == 0 or 5 <= e.jackknife_groups <= num_samples, "evaluate.jackknife_groups", e.jackknife_groups,
                     f"0 (no intervals) or an integer in [5, sample.num_samples = {num_samples}] (fewer groups: a wider t quantile)")  # fmt: skip
    problems.require(e.jackknife_groups == 0 or num_samples <= MAX_INTERVAL_SAMPLES, "evaluate.jackknife_groups", e.jackknife_groups,
                     f"0 when sample.num_samples = {num_samples} > {MAX_INTERVAL_SAMPLES}: the replicated KID keeps N x N kernel "
                     f"matrices ({8 * num_samples**2 / 1e9:.0f} GB each at this N)")  # fmt: skip
    return problems


def _tracking_problems(tracking: TrackingConfig) -> list[str]:
    """The registered model's name, which goes into models:/<name>@<alias> URIs."""
    problems = _Problems()
    name = tracking.registered_name
    problems.require(
        bool(name.strip()) and not set(name) & set("/@:"),
        "tracking.model_name",
        tracking.model_name,
        "null (the experiment's name) or a name without '/', '@' or ':' (they would break models:/<name>@<alias> URIs)",
    )
    return problems
