"""`ddpmlab validate`: the stages' own parse + validate of a params file, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from conftest import ROOT
from ddpmlab.cli import main
from ddpmlab.config import Params
from ddpmlab.pipeline.stage_io import EXIT_CONFIG_ERROR

DELETE = object()  # a change that removes the key


def repository_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def changed(key: str, value: object) -> dict:
    """The repository params.yaml with one dotted key set (a missing one is added)."""
    raw = repository_params()
    *sections, last = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


def validate(path: Path) -> Result:
    return CliRunner().invoke(main, ["validate", str(path)])


def write(path: Path, raw: object) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("  - ")]


def problem_key(line: str) -> str:
    return line.removeprefix("  - ").split(":")[0]


SAMPLER_NAMES = "a non-empty list of distinct names among ddpm, ddim, euler_ancestral, plms, dpmpp_2m, dpmpp_3m, heun, ipndm, unipc, unipc_3, ddim_afs, plms_afs, dpmpp_2m_afs, dpmpp_3m_afs, heun_afs, ipndm_afs, unipc_afs, unipc_3_afs"
SPACING_NAMES = "a non-empty list of distinct names among uniform, trailing, quadratic, logsnr, karras, arctan, searched"

# (key changed, its new value, a line of the report naming the key and the value)
MALFORMED = [
    # unknown keys, with the closest known key
    ("schedul", "cosine", "schedul: unknown key; did you mean 'schedule'?"),
    ("train.lrr", 0.01, "train.lrr: unknown key; did you mean 'train.lr'?"),
    ("model.chanels", 16, "model.chanels: unknown key; did you mean 'model.channels'?"),
    # wrong types
    ("T", "100", "T: expected int, got '100' (str)"),
    ("train.steps", 1.5, "train.steps: expected int, got 1.5 (float)"),
    ("seed", True, "seed: expected int, got True (bool)"),
    ("data.hflip", "yes", "data.hflip: expected bool, got 'yes' (str)"),
    ("schedule", ["linear"], "schedule: expected str, got ['linear'] (list)"),
    ("train.lr", {"value": 0.001}, "train.lr: expected float, got {'value': 0.001} (dict)"),
    ("model.dropout", "0.1", "model.dropout: expected float, got '0.1' (str)"),
    ("data.channels", 1.0, "data.channels: expected int, got 1.0 (float)"),
    ("sample.steps", [100, "fifty"], "sample.steps[1]: expected int, got 'fifty' (str)"),
    ("train", 5, "train: expected a mapping of keys, got 5"),
    ("sample", ["ddpm"], "sample: expected a mapping of keys, got ['ddpm']"),
    # out of range
    ("T", 0, "T: got 0; allowed: an integer >= 1"),
    ("sample.steps", [100, 200], "sample.steps: got [100, 200]; allowed: a non-empty list of distinct step counts in [1, T = 100]"),
    ("sample.steps", [0, 10], "sample.steps: got [0, 10]; allowed: a non-empty list of distinct step counts"),
    ("sample.steps", [50, 50], "sample.steps: got [50, 50]; allowed: a non-empty list of distinct step counts"),
    ("sample.steps", [], "sample.steps: got []; allowed: a non-empty list"),
    ("train.lr", 0, "train.lr: got 0.0; allowed: a number > 0"),
    ("train.grad_clip", -1, "train.grad_clip: got -1.0; allowed: a number > 0"),
    ("train.batch_size", 0, "train.batch_size: got 0; allowed: an integer >= 1"),
    ("train.ema_decay", 1.0, "train.ema_decay: got 1.0; allowed: a number in [0, 1)"),
    ("model.dropout", 1, "model.dropout: got 1.0; allowed: a number in [0, 1)"),
    ("train.warmup_steps", -5, "train.warmup_steps: got -5; allowed: an integer >= 0"),
    ("data.test_fraction", 1.0, "data.test_fraction: got 1.0; allowed: a fraction in (0, 1)"),
    ("data.test_fraction", 0, "data.test_fraction: got 0.0; allowed: a fraction in (0, 1)"),
    ("data.channels", 2, "data.channels: got 2; allowed: null (the source's own), 1 (grayscale) or 3 (RGB)"),
    ("classifier.min_accuracy", 1.5, "classifier.min_accuracy: got 1.5; allowed: a fraction in [0, 1]"),
    ("sample.eta", -0.5, "sample.eta: got -0.5; allowed: a number >= 0"),
    ("evaluate.snapshot_steps", 101, "evaluate.snapshot_steps: got 101; allowed: an integer in [1, T = 100]"),
    # the U-Net's shape
    ("data.image_size", 18, "data.image_size: got 18; allowed: a positive multiple of 4"),
    ("model.attention_levels", [3], "model.attention_levels: got [3]; allowed: levels among 0 (16x16), 1 (8x8), 2 (4x4)"),
    ("model.norm_groups", 12, "model.norm_groups: got 12; allowed: a divisor of every level's width [32, 64]"),
    ("model.channel_mult", [], "model.channel_mult: got []; allowed: a non-empty list of integers >= 1"),
    # one key against another
    ("sample.num_samples", 50, "evaluate.kid_subset_size: got 100; allowed: an integer in [2, sample.num_samples = 50]"),
    ("evaluate.isc_splits", 501, "evaluate.isc_splits: got 501; allowed: an integer in [1, sample.num_samples = 500]"),
    ("train.grad_accum", 3, "train.grad_accum: got 3; allowed: an integer >= 1 that divides train.batch_size = 128"),
    ("sample.variance", "learned_range", "sample.variance: got 'learned_range'; allowed: fixed_large or fixed_small, or learned_range together with train.learn_variance: true"),
    # names outside their list
    ("schedule", "cosin", "schedule: got 'cosin'; allowed: cosine, linear, quadratic, sigmoid"),
    ("objective", "epsilon", "objective: got 'epsilon'; allowed: eps, v, x0"),
    ("device", "tpu", "device: got 'tpu'; allowed: auto, cpu, cuda, mps"),
    ("sample.sampler", ["euler"], f"sample.sampler: got ['euler']; allowed: {SAMPLER_NAMES}"),
    ("sample.sampler", "euler", f"sample.sampler: got ['euler']; allowed: {SAMPLER_NAMES}"),  # a bare name is a list of one
    ("sample.sampler", ["ddim", "ddim"], f"sample.sampler: got ['ddim', 'ddim']; allowed: {SAMPLER_NAMES}"),
    ("sample.sampler", [], f"sample.sampler: got []; allowed: {SAMPLER_NAMES}"),
    ("sample.spacing", ["cosine"], f"sample.spacing: got ['cosine']; allowed: {SPACING_NAMES}"),
    ("sample.spacing", ["uniform", "uniform"], f"sample.spacing: got ['uniform', 'uniform']; allowed: {SPACING_NAMES}"),
    ("sample.variance", "learned", "sample.variance: got 'learned'; allowed: fixed_large, fixed_small, learned_range"),
    ("train.precision", "fp16", "train.precision: got 'fp16'; allowed: auto, bf16, fp32"),
    ("sample.precision", "int8", "sample.precision: got 'int8'; allowed: auto, bf16, fp32"),
    ("train.weighting", "snr", "train.weighting: got 'snr'; allowed: min_snr, mse"),
    ("data.source", "imagenet", "data.source: got 'imagenet'; allowed: cifar10, digits, fashion_mnist, folder, mnist"),
    ("evaluate.feature_extractor", "clip", "evaluate.feature_extractor: got 'clip'; allowed: classifier, inception-v3-compat"),
    ("tracking.model_name", "team/ddpm", "tracking.model_name: got 'team/ddpm'; allowed: null (the experiment's name) or a name without"),
    ("tracking.register_model", "yes", "tracking.register_model: expected bool, got 'yes' (str)"),
]


@pytest.mark.parametrize("key,value,expected", MALFORMED, ids=[f"{key}={value!r}" for key, value, _ in MALFORMED])
def test_each_malformed_config_exits_78_naming_the_key_and_the_value(tmp_path: Path, key: str, value: object, expected: str):
    path = write(tmp_path / "params.yaml", changed(key, value))
    result = validate(path)
    assert result.exit_code == EXIT_CONFIG_ERROR, result.output
    assert f"  - {expected}" in result.output
    assert "valid (" not in result.output


def test_the_malformed_configs_are_distinct():
    assert len({(key, repr(value)) for key, value, _ in MALFORMED}) == len(MALFORMED) >= 30


def test_every_problem_of_a_config_is_reported_one_per_line(tmp_path: Path):
    raw = changed("train.lr", -1)
    raw["schedule"], raw["T"], raw["train"]["ema_decay"], raw["device"] = "cosin", 10, 1.5, "tpu"
    raw["sample"]["steps"] = [100, 50, 20, 10]  # steps beyond the new T
    result = validate(write(tmp_path / "params.yaml", raw))
    assert result.exit_code == EXIT_CONFIG_ERROR
    lines = problem_lines(result.output)
    assert len(lines) == 6, result.output
    assert {problem_key(line) for line in lines} == {"schedule", "device", "sample.steps", "evaluate.snapshot_steps", "train.lr", "train.ema_decay"}
    assert "  - sample.steps: got [100, 50, 20, 10]; allowed: a non-empty list of distinct step counts in [1, T = 10]" in lines


def test_type_problems_in_several_sections_are_reported_together(tmp_path: Path):
    raw = changed("train.steps", "many")
    raw["model"]["channels"], raw["data"]["hflip"], raw["bogus"] = 3.5, "no", 1
    lines = problem_lines(validate(write(tmp_path / "params.yaml", raw)).output)
    assert len(lines) == 4
    assert {problem_key(line) for line in lines} == {"bogus", "data.hflip", "model.channels", "train.steps"}


def test_the_repository_params_yaml_is_valid():
    result = validate(ROOT / "params.yaml")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{ROOT / 'params.yaml'}: valid (")
    assert "T=100" in result.output and "linear schedule" in result.output


def test_the_default_path_is_params_yaml_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "params.yaml", changed("T", DELETE))  # a missing key takes its default, params.yaml's own value
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("params.yaml: valid (") and f"T={Params().T}" in result.output and Params().T == repository_params()["T"]


def test_a_missing_file_exits_78_naming_it(tmp_path: Path):
    result = validate(tmp_path / "nowhere.yaml")
    assert result.exit_code == EXIT_CONFIG_ERROR
    assert f"cannot read params file {tmp_path / 'nowhere.yaml'}: No such file or directory" in result.output


def test_broken_yaml_exits_78_naming_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [0.001\n  steps: 10\n")
    result = validate(path)
    assert result.exit_code == EXIT_CONFIG_ERROR
    assert f"{path} is not valid YAML" in result.output


def test_a_yaml_list_is_not_a_params_file(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- T: 10\n")
    result = validate(path)
    assert result.exit_code == EXIT_CONFIG_ERROR
    assert "params.yaml: expected a mapping of keys, got [{'T': 10}]" in result.output


def test_the_group_help_lists_validate():
    result = CliRunner().invoke(main, ["--help"])
    assert "ddpmlab validate" in result.output


def test_validate_runs_from_a_shell_with_the_config_exit_code(tmp_path: Path):
    """The console script `ddpmlab` is ddpmlab.cli:main; run the module the same way."""
    bad = write(tmp_path / "bad.yaml", changed("train.lr", -1))
    good = ROOT / "params.yaml"
    runs = {path: subprocess.run([sys.executable, "-m", "ddpmlab.cli", "validate", str(path)], check=False, capture_output=True, text=True) for path in (bad, good)}
    assert runs[bad].returncode == EXIT_CONFIG_ERROR and "train.lr: got -1.0; allowed: a number > 0" in runs[bad].stderr
    assert runs[good].returncode == 0 and f"{good}: valid (" in runs[good].stdout
    assert 'ddpmlab = "ddpmlab.cli:main"' in (ROOT / "pyproject.toml").read_text()  # the console script a shell finds


def test_a_sampler_option_is_checked_even_when_its_sampler_is_not_swept(tmp_path: Path):
    """sample.eta belongs to ddim's options: a bad value never waits in params.yaml for ddim to be added."""
    raw = changed("sample.eta", -1.0)
    raw["sample"]["sampler"] = ["ddpm"]
    result = validate(write(tmp_path / "params.yaml", raw))
    assert result.exit_code == EXIT_CONFIG_ERROR
    assert [line.split(";")[0] for line in problem_lines(result.output)] == ["  - sample.eta: got -1.0"]
    assert "allowed: a number >= 0" in result.output
