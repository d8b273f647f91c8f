"""params.yaml validation: every problem named by key, value and what is allowed."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from ddpmlab.config import ConfigError, Params, flatten

ROOT = Path(__file__).resolve().parents[1]


def default_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_yaml_is_valid_and_has_the_documented_keys():
    params = Params.from_dict(default_raw())
    flat = flatten(params.to_dict())
    for key in ("seed", "schedule", "T", "data.source", "data.image_size", "train.steps", "train.batch_size", "train.lr", "sample.num_samples"):
        assert key in flat


def with_change(path: str, value) -> dict:
    raw = default_raw()
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[last] = value
    return raw


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("schedule", "cosin", "schedule: got 'cosin'; allowed: cosine, linear, quadratic, sigmoid"),
        ("T", 0, "T: got 0"),
        ("T", "many", "T: expected int"),
        ("train.lr", -1.0, "train.lr: got -1.0"),
        ("train.steps", 1.5, "train.steps: expected int"),
        ("train.ema_decay", 1.0, "train.ema_decay"),
        ("data.image_size", 10, "data.image_size: got 10"),
        ("data.source", "imagenet", "data.source: got 'imagenet'; allowed: cifar10, digits, fashion_mnist, folder, mnist"),
        ("data.channels", 2, "data.channels: got 2; allowed: null (the source's own), 1 (grayscale) or 3 (RGB)"),
        ("data.root", " ", "data.root: got ' '"),
        ("data.hflip", "yes", "data.hflip: expected bool"),
        ("classifier.steps", 0, "classifier.steps: got 0"),
        ("model.attention_levels", [3], "model.attention_levels: got [3]; allowed: levels among 0 (16x16), 1 (8x8), 2 (4x4) at data.image_size=16"),
        ("model.norm_groups", 7, "model.norm_groups: got 7"),
        ("sample.variance", "learned", "sample.variance: got 'learned'"),
        ("sample.variance", "learned_range", "learned_range together with train.learn_variance: true"),
        ("sample.steps", [100, 1000], "sample.steps: got [100, 1000]; allowed: a non-empty list of distinct step counts in [1, T = 100]"),
        ("sample.steps", [50, 50], "sample.steps: got [50, 50]"),
        ("sample.steps", [], "sample.steps: got []"),
        ("sample.steps", [0], "sample.steps: got [0]"),
        ("train.weighting", "snr", "train.weighting: got 'snr'; allowed: min_snr, mse"),
        ("train.min_snr_gamma", 0, "train.min_snr_gamma: got 0.0"),
        ("train.vlb_weight", -1, "train.vlb_weight: got -1.0"),
        ("evaluate.nll_images", -1, "evaluate.nll_images: got -1"),
        ("sample.clip_x0", "yes", "sample.clip_x0: expected bool"),
        ("evaluate.kid_subset_size", 100_000, "evaluate.kid_subset_size"),
        ("device", "tpu", "device: got 'tpu'"),
        ("evaluate.feature_extractor", "inception", "evaluate.feature_extractor: got 'inception'; allowed: classifier, inception-v3-compat"),
        ("evaluate.inception_weights", 3, "evaluate.inception_weights: expected str, got 3"),
        ("evaluate.isc_splits", 501, "evaluate.isc_splits: got 501; allowed: an integer in [1, sample.num_samples = 500]"),
        ("evaluate.snapshot_steps", 101, "evaluate.snapshot_steps: got 101; allowed: an integer in [1, T = 100]"),
        ("evaluate.snapshot_samples", -1, "evaluate.snapshot_samples: got -1"),
        ("evaluate.jackknife_groups", 4, "evaluate.jackknife_groups: got 4; allowed: 0 (no intervals) or an integer in [5, sample.num_samples"),
        ("classifier.min_accuracy", 1.5, "classifier.min_accuracy: got 1.5; allowed: a fraction in [0, 1]"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as info:
        Params.from_dict(with_change(key, value))
    assert expected in str(info.value)


def test_zero_norm_groups_is_a_problem_not_a_crash():
    # the architecture check takes every level's width modulo model.norm_groups: 0 must not raise ZeroDivisionError
    with pytest.raises(ConfigError) as info:
        Params.from_dict({"model": {"norm_groups": 0}})
    assert info.value.problems == ["model.norm_groups: got 0; allowed: an integer >= 1"]


def test_unknown_keys_suggest_the_closest_one():
    raw = default_raw()
    raw["train"]["stpes"] = 10
    raw["shedule"] = "linear"
    with pytest.raises(ConfigError) as info:
        Params.from_dict(raw)
    assert len(info.value.problems) == 2
    assert "train.stpes: unknown key; did you mean 'train.steps'?" in str(info.value)
    assert "shedule: unknown key; did you mean 'schedule'?" in str(info.value)


def test_optional_path_accepts_null_and_a_string():
    assert Params.from_dict(with_change("evaluate.inception_weights", None)).evaluate.inception_weights is None
    assert Params.from_dict(with_change("evaluate.inception_weights", "/w.pth")).evaluate.inception_weights == "/w.pth"


def test_scalar_for_a_list_param_is_accepted():
    # `dvc exp run -S model.attention_levels=1` writes a scalar
    assert Params.from_dict(with_change("model.attention_levels", 1)).model.attention_levels == (1,)


def test_training_dict_excludes_sampling_and_evaluation():
    training = Params.from_dict(default_raw()).training_dict()
    assert {"schedule", "T", "model", "train", "data"} <= training.keys()
    assert not {"sample", "evaluate", "classifier", "tracking"} & training.keys()


def test_config_lists_exactly_the_extractors_metrics_implements():
    from ddpmlab.evaluation.extractor_names import FEATURE_EXTRACTORS
    from ddpmlab.evaluation.metrics import EXTRACTORS

    assert set(FEATURE_EXTRACTORS) == set(EXTRACTORS)  # config stays free of torch-fidelity, so it keeps its own copy


# -- one source of defaults: the dataclasses' defaults are params.yaml's values ---------------

SECTIONS = [f.name for f in dataclasses.fields(Params) if dataclasses.is_dataclass(getattr(Params(), f.name))]  # data, model, train, ...


def _differences(default: object, loaded: object, prefix: str = "") -> list[str]:
    """One ``key: default X vs params.yaml Y`` line per leaf that differs (dataclasses compared field by field)."""
    if dataclasses.is_dataclass(default):
        return [line for f in dataclasses.fields(default) for line in _differences(getattr(default, f.name), getattr(loaded, f.name), f"{prefix}{f.name}.")]
    key = prefix.rstrip(".")
    return [] if default == loaded and type(default) is type(loaded) else [f"{key}: default {default!r} vs params.yaml {loaded!r}"]


@pytest.mark.parametrize("section", ["(top level)", *SECTIONS])
def test_dataclass_defaults_are_the_repository_params_yaml(section):
    """A params file that leaves a key out gets params.yaml's value for it, not another one."""
    default, loaded = Params(), Params.from_dict(default_raw())  # from_dict: lists become tuples, ints floats where declared
    if section == "(top level)":
        differences = [line for f in dataclasses.fields(Params) if f.name not in SECTIONS for line in _differences(getattr(default, f.name), getattr(loaded, f.name), f"{f.name}.")]
    else:
        differences = _differences(getattr(default, section), getattr(loaded, section), f"{section}.")
    assert not differences, "dataclass defaults differ from params.yaml:\n" + "\n".join(differences)


def test_params_yaml_and_the_dataclasses_have_the_same_keys():
    in_yaml, in_dataclasses = set(flatten(default_raw())), set(flatten(Params().to_dict()))
    assert in_yaml == in_dataclasses, f"only in params.yaml: {sorted(in_yaml - in_dataclasses)}; only in the dataclasses: {sorted(in_dataclasses - in_yaml)}"
