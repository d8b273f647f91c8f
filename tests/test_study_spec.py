"""A study file (ddpmlab.study.spec): expanded into config x seed tasks, each checked as the stages
check params, and every bad input refused before anything runs, naming the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ddpmlab.cli import main
from ddpmlab.config import ConfigError
from ddpmlab.study import spec

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
VALID = {
    "name": "schedules",
    "factors": {"schedule": ["linear", "cosine"], "sample.steps": [10, 20]},
    "seeds": [0, 1, 2],
    "fixed": {"train.steps": 300},
    "executor": "slurm",
    "resources": {"cpus": 1, "memory_gb": 2, "time": "00:30:00"},
}


def test_a_study_expands_to_every_config_at_every_seed():
    tasks = spec.tasks(spec.parse(VALID), PARAMS)
    assert len(tasks) == 2 * 2 * 3
    assert len({t.name for t in tasks}) == 12 and len({t.config_name for t in tasks}) == 4
    first = tasks[0]
    assert first.name == "schedules-schedule_linear-steps_10-s0"
    assert first.overrides == {"train.steps": 300, "schedule": "linear", "sample.steps": 10, "train.seed": 0}
    assert [t.seed for t in tasks if t.config == {"schedule": "cosine", "sample.steps": 20}] == [0, 1, 2]
    assert spec.nested(first.overrides) == {"train": {"steps": 300, "seed": 0}, "schedule": "linear", "sample": {"steps": 10}}


def test_more_seeds_can_be_asked_for_the_same_configs():
    tasks = spec.tasks(spec.parse(VALID), PARAMS, seeds=[3, 4])
    assert sorted({t.seed for t in tasks}) == [3, 4] and len(tasks) == 8


@pytest.mark.parametrize(("change", "message"), [
    ({"surprise": 1}, "unknown key 'surprise'"),
    ({"name": "two words"}, "name = 'two words' must be"),
    ({"seeds": [0, 0]}, "lists a seed twice"),
    ({"seeds": [0, -1]}, r"seeds = \[0, -1\] must be a list of training seeds"),
    ({"seeds": "0,1"}, "seeds = '0,1'"),
    ({"factors": {}}, "factors must map at least one params key"),
    ({"factors": {"schedule": "linear"}}, "factors.schedule = 'linear' must be a list"),
    ({"factors": {"train.seed": [0, 1]}}, "is not a factor: list replicates under seeds"),
    ({"fixed": {"schedule": "cosine"}}, "schedule is both fixed and varied"),
    ({"executor": "kubernetes"}, "executor = 'kubernetes': choose one of local, slurm"),
    ({"resources": {"cpus": 0}}, "cpus >= 1"),
    ({"resources": {"time": "2 hours"}}, r"resources.time = '2 hours' must be SLURM's"),
    ({"resources": {"gpu": 1}}, "resources has no 'gpu': it takes cpus, gpus, memory_gb, partition, time"),
    ({"resources": {"cpus": "2"}}, r"resources.cpus = '2' must be a int"),
    ({"extend": {"max_seeds": 2}}, "needs max_seeds >= the 3 seeds"),
])  # fmt: skip
def test_a_bad_study_file_is_refused_naming_the_key_and_value(change: dict, message: str):
    with pytest.raises(spec.StudyError, match=message):
        spec.parse({**VALID, **change})


def test_a_params_key_the_file_lacks_is_refused_with_a_suggestion():
    study = spec.parse({**VALID, "factors": {"sample.stepz": [10, 20]}})
    with pytest.raises(ConfigError, match=r"sample.stepz is not a key of .*params.yaml.*did you mean sample.steps\?"):
        spec.tasks(study, PARAMS)


def test_a_bad_value_is_refused_naming_every_task_that_has_it():
    study = spec.parse({**VALID, "factors": {"schedule": ["linear", "cosin"]}})
    with pytest.raises(ConfigError) as failure:
        spec.tasks(study, PARAMS)
    bad = [line for line in failure.value.problems if "cosin" in line]
    assert len(bad) == 3 and all(line.startswith("task schedules-schedule_cosin-s") for line in bad), failure.value.problems
    assert not any("schedule_linear" in line for line in failure.value.problems)


def test_study_plan_prints_each_task_and_its_command_and_refuses_a_bad_file_with_exit_1(tmp_path: Path):
    good = tmp_path / "study.yaml"
    good.write_text(yaml.safe_dump({**VALID, "executor": "local"}, sort_keys=False))
    result = CliRunner().invoke(main, ["study", "plan", str(good), "--params", str(PARAMS)])
    assert result.exit_code == 0, result.output
    assert "4 configs x 3 seeds = 12 tasks, executor local" in result.output
    assert "each task reruns: train, search, sample, evaluate, report (the rest comes from DVC's cache)" in result.output
    assert ("dvc exp run -S train.steps=300 -S schedule=cosine -S sample.steps=20 -S train.seed=2 "
            "--name schedules-schedule_cosine-steps_20-s2") in result.output  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**VALID, "seeds": [1, 1]}))
    result = CliRunner().invoke(main, ["study", "plan", str(bad), "--params", str(PARAMS), "--no-check-cluster"])
    assert result.exit_code == 1 and "lists a seed twice" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["study", "plan", str(tmp_path / "none.yaml"), "--params", str(PARAMS)])
    assert missing.exit_code == 1 and "cannot read the study file" in missing.output


@pytest.mark.parametrize(("keys", "stages"), [
    (["schedule", "train.seed"], ["train", "search", "sample", "evaluate", "report"]),
    (["evaluate.num_samples"], ["evaluate", "report"]),
    (["sample.steps"], ["search", "sample", "evaluate", "report"]),
    (["data.image_size"], ["prepare", "classifier", "train", "search", "sample", "evaluate", "report"]),
    (["seed"], ["prepare", "classifier", "train", "search", "sample", "evaluate", "report"]),
])  # fmt: skip
def test_the_stages_a_task_reruns_are_read_from_the_projects_dvc_yaml(keys: list[str], stages: list[str]):
    """Against dvc.yaml as written: each stage's params and the deps on other stages' outs."""
    from ddpmlab.study.reruns import stages_to_rerun

    assert stages_to_rerun(ROOT / "dvc.yaml", keys) == stages


def test_array_indices_only_grow_when_seeds_are_added(tmp_path: Path):
    """An array still running from an earlier submission reads tasks.tsv by its index: a task keeps its line."""
    from ddpmlab.study.slurm_submit import write_tasks

    study = spec.parse(VALID)
    first = write_tasks(tmp_path, spec.tasks(study, PARAMS))
    more = write_tasks(tmp_path, spec.tasks(study, PARAMS, seeds=[0, 1, 2, 3]))
    assert all(more[name] == index for name, index in first.items())
    assert sorted(more.values()) == list(range(16)) and min(v for k, v in more.items() if k not in first) == 12
    lines = (tmp_path / "tasks.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(16))
    assert lines[0].split("\t")[1] == "schedules-schedule_linear-steps_10-s0"


def test_targets_must_be_stages_of_dvc_yaml_and_end_each_command():
    study = spec.parse({**VALID, "targets": ["train"]})
    assert spec.tasks(study, PARAMS)[0].name == "schedules-schedule_linear-steps_10-s0"
    with pytest.raises(spec.StudyError, match=r"targets: 'trian' is not a stage of .*dvc.yaml \(it has prepare, classifier, train"):
        spec.tasks(spec.parse({**VALID, "targets": ["trian"]}), PARAMS)
    with pytest.raises(spec.StudyError, match="targets = 'train' must be a list"):
        spec.parse({**VALID, "targets": "train"})
