"""The slurm executor against a real single-node SLURM cluster (slurmctld, slurmd and munged
from Debian, started by the `slurm` fixture): what the scheduler offers is read from it, and a
study asking for a partition it lacks or more than its node holds is refused before anything is
submitted, naming the value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import needs_slurm
from ddpmlab.cli import main
from ddpmlab.study import slurm as executor
from ddpmlab.study.spec import Resources, StudyError

pytestmark = needs_slurm
ROOT = Path(__file__).resolve().parents[1]


def test_the_fixture_cluster_runs_a_job_array_two_at_a_time(slurm, tmp_path: Path):
    """The scheduler itself: four array tasks on two CPUs, each writing its index."""
    out = tmp_path / "out"
    out.mkdir()
    job = slurm.run("sbatch", "--parsable", "--array=0-3", "--cpus-per-task=1", f"--output={out}/task_%a.out",
                    "--wrap", "echo task=$SLURM_ARRAY_TASK_ID").stdout.strip()  # fmt: skip
    deadline = time.monotonic() + 120
    while slurm.run("squeue", "-h", "-j", job).stdout.strip():
        assert time.monotonic() < deadline, slurm.run("squeue", "-j", job).stdout
        time.sleep(0.5)
    assert sorted(p.read_text().strip() for p in out.glob("task_*.out")) == [f"task={i}" for i in range(4)]


def test_the_partitions_and_the_largest_node_are_read_from_the_scheduler(slurm):
    found = executor.partitions()
    assert list(found) == ["debug"]
    debug = found["debug"]
    assert debug.default and (debug.cpus, debug.memory_mb, debug.gpus) == (slurm.cpus, slurm.memory_mb, 0)
    assert executor.check(Resources(cpus=1, memory_gb=1)) == debug  # no partition named: the default


@pytest.mark.parametrize(("resources", "message"), [
    (Resources(partition="gpu"), "resources.partition = 'gpu': the cluster has debug"),
    (Resources(cpus=64), r"partition 'debug' cannot hold one task: resources.cpus = 64 \(its largest node has \d+\)"),
    (Resources(gpus=1), r"resources.gpus = 1 \(its largest node has 0\)"),
    (Resources(memory_gb=10_000), r"resources.memory_gb = 10000 \(its largest node has [\d.]+\)"),
])  # fmt: skip
def test_resources_the_cluster_cannot_give_are_refused_naming_them(slurm, resources: Resources, message: str):
    with pytest.raises(StudyError, match=message):
        executor.check(resources)


def test_study_plan_checks_the_resources_against_the_scheduler(slurm, tmp_path: Path):
    study = {"name": "tiny", "factors": {"schedule": ["linear", "cosine"]}, "seeds": [0, 1, 2], "executor": "slurm",
             "resources": {"cpus": 1, "memory_gb": 1, "time": "00:10:00"}}  # fmt: skip
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(main, ["study", "plan", str(good), "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "2 configs x 3 seeds = 6 tasks, executor slurm" in result.output and "on partition 'debug'" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**study, "resources": {**study["resources"], "partition": "a100"}}))
    result = CliRunner().invoke(main, ["study", "plan", str(bad), "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 1 and "resources.partition = 'a100': the cluster has debug" in result.output
