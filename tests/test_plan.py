"""The run plan and the metric registry: what every stage iterates over and names its outputs by."""

import dataclasses

import pytest

from ddpmlab.config import Params, SampleConfig
from ddpmlab.evaluation import metric_registry
from ddpmlab.sampling.catalog import DDIMOptions, DDPMOptions
from ddpmlab.sampling.plan import Run, build_plan, guidance_sweep, step_sweep
from ddpmlab.sampling.registry import SAMPLERS


def test_unconditional_plan_is_every_sampler_spacing_and_step_count_headline_first():
    sample = SampleConfig(sampler=("ddpm", "heun"), spacing=("uniform", "logsnr"), steps=(10, 5), eta=0.5)
    runs = build_plan(sample, conditional=False)
    assert [r.key for r in runs] == ["ddpm-10", "ddpm-5", "ddpm-logsnr-10", "ddpm-logsnr-5", "heun-10", "heun-5", "heun-logsnr-10", "heun-logsnr-5"]
    assert [r.nfe for r in runs] == [10, 5, 10, 5, 19, 9, 19, 9]
    assert runs[0].options == DDPMOptions("fixed_large") and runs[0].option_values == {"variance": "fixed_large"}
    assert runs[-1].option_values == {} and all(r.guidance is None for r in runs)
    assert step_sweep(runs) == runs and guidance_sweep(runs) == []
    assert len({r.folder for r in runs}) == len(runs)


def test_conditional_plan_sweeps_w_at_the_first_run_only():
    sample = SampleConfig(sampler=("ddim", "dpmpp_2m"), spacing=("uniform",), steps=(20, 10), guidance=(0.0, 1.5, 3.0), eta=0.25)
    runs = build_plan(sample, conditional=True)
    assert [r.key for r in runs] == ["ddim-20-w0", "ddim-10-w0", "dpmpp_2m-20-w0", "dpmpp_2m-10-w0", "ddim-20-w1.5", "ddim-20-w3"]
    assert [r.nfe for r in runs] == [20, 10, 20, 10, 40, 40]  # w = 0 is one conditional pass, w > 0 two
    assert runs[-1].options == DDIMOptions(0.25)
    assert [r.key for r in guidance_sweep(runs)] == ["ddim-20-w0", "ddim-20-w1.5", "ddim-20-w3"]
    assert [r.key for r in step_sweep(runs)] == ["ddim-20-w0", "ddim-10-w0", "dpmpp_2m-20-w0", "dpmpp_2m-10-w0"]


def test_a_run_survives_its_sampling_json_record():
    run = Run("ddim", 7, "karras", 2.0, DDIMOptions(0.3))
    assert Run.from_dict(run.to_dict()) == run
    assert run.to_dict()["nfe"] == 14 and run.key == "ddim-karras-7-w2"


def test_the_repository_defaults_plan_a_sampler_sweep():
    runs = build_plan(Params().sample, conditional=False)
    assert {r.sampler for r in runs} == {"ddpm", "ddim", "dpmpp_2m"} and {r.steps for r in runs} == {50, 10, 5, 4, 3}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_option_is_a_sample_key_with_the_same_default(name):
    """A sampler's options are read from sample.*: each field must exist there (so `-S sample.<field>=...`
    works) and the option dataclass's default must be params.yaml's."""
    defaults = SampleConfig()
    for field in dataclasses.fields(SAMPLERS[name].options):
        assert hasattr(defaults, field.name), f"{name}: option {field.name} is not a sample.* key"
        assert getattr(defaults, field.name) == field.default


def test_steps_csv_columns_come_from_the_registry():
    fields = metric_registry.row_fields(conditional=False)
    assert fields[:6] == ("key", "sampler", "spacing", "steps", "nfe", "guidance")
    assert {"fid", "fid_train", "kid_mean_train", "precision_train", "is_mean", "fid_ratio", "seconds_per_sample"} <= set(fields)
    assert "cond_accuracy" not in fields and "cond_accuracy" in metric_registry.row_fields(conditional=True)


def test_headline_holds_the_first_run_only():
    rows = [{"key": "ddpm-10", "fid": 2.0, "fid_train": 1.5, "is_mean": 8.0, "kid_mean": 0.1, "precision": 0.8, "recall": 0.9, "copy_rate": 0.01, "copy_rate_pixels": 0.0, "seconds_per_sample": 0.01},
            {"key": "ddim-10", "fid": 1.0, "fid_train": 0.7, "is_mean": 8.5, "kid_mean": 0.05, "precision": 0.85, "recall": 0.9, "copy_rate": 0.02, "copy_rate_pixels": 0.0, "seconds_per_sample": 0.01}]  # fmt: skip
    out = metric_registry.headline(rows[0])
    assert out == {"fid": 2.0, "fid_train": 1.5, "is_mean": 8.0, "kid_mean": 0.1, "precision": 0.8, "recall": 0.9,
                   "copy_rate": 0.01, "copy_rate_pixels": 0.0}  # fmt: skip
    assert "cond_accuracy" not in out  # conditional metrics only where the run has them
    assert metric_registry.headline({**rows[0], "cond_accuracy": 0.9})["cond_accuracy"] == 0.9
