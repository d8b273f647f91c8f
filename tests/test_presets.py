"""Presets: configs/cifar10.yaml is the paper's CIFAR-10 network, and `ddpmlab preset` applies it through dvc exp run -S."""

from pathlib import Path

import yaml
from click.testing import CliRunner

from ddpmlab.cli import main
from ddpmlab.model.trained import build_unet
from ddpmlab.nn.unet import count_parameters
from ddpmlab.pipeline import presets

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "configs" / "cifar10.yaml"


def test_cifar10_preset_is_valid_and_has_the_papers_35_7m_parameters():
    _, params = presets.load(CIFAR, ROOT / "params.yaml")
    assert (params.data.source, params.data.image_size, params.T, params.schedule) == ("cifar10", 32, 1000, "linear")
    assert (params.train.batch_size, params.train.lr, params.train.ema_decay) == (128, 2e-4, 0.9999)
    model = build_unet(params.to_dict()["model"], in_channels=3, image_size=32)
    assert abs(count_parameters(model) / 35.7e6 - 1) < 0.01  # Ho et al. 2020, appendix B: 35.7M


def test_set_arguments_parse_back_to_the_preset_values():
    overrides = {"T": 1000, "model": {"channel_mult": [1, 2, 2, 2], "dropout": 0.1}, "data": {"hflip": True, "root": "data/raw"}, "evaluate": {"inception_weights": None}}
    args = presets.set_arguments(overrides)
    assert args[::2] == ["-S"] * 6
    parsed = {}
    for pair in args[1::2]:
        key, text = pair.split("=", 1)
        parsed[key] = yaml.safe_load(text)  # DVC reads -S values as YAML
    assert parsed == {"T": 1000, "model.channel_mult": [1, 2, 2, 2], "model.dropout": 0.1, "data.hflip": True, "data.root": "data/raw", "evaluate.inception_weights": None}


def test_preset_command_prints_the_dvc_command_and_rejects_a_typo(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["preset", str(CIFAR), "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("dvc exp run -S schedule=linear -S T=1000")
    assert "'model.channel_mult=[1,2,2,2]'" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stesp: 10\n")
    result = runner.invoke(main, ["preset", str(bad), "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 1
    assert "train.stesp: unknown key; did you mean 'train.steps'?" in result.output
