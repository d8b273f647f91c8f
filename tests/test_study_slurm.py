"""The slurm executor against a real single-node SLURM cluster (slurmctld, slurmd and munged
from Debian, started by the `slurm` fixture): what the scheduler offers is read from it, and a
study asking for a partition it lacks or more than its node holds is refused before anything is
submitted, naming the value."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import copy_project, needs_slurm
from ddpmlab.cli import main
from ddpmlab.study import slurm as executor
from ddpmlab.study import slurm_submit
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


def project(folder: Path, env: dict) -> Path:
    """A copy of this project with tiny params, committed, and a bare origin beside it."""
    repo = copy_project(folder / "project")
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "tiny params"]):
        subprocess.run(["git", *command], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(folder / "origin.git")], env=env, check=True)
    subprocess.run(["git", "remote", "add", "origin", str(folder / "origin.git")], cwd=repo, env=env, check=True)
    return repo


@pytest.mark.e2e
def test_a_study_runs_as_one_array_and_a_second_submit_submits_nothing(slurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="ddpmlab-study-"))  # storage "every node sees"
    try:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "ddpmlab test",
               "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "ddpmlab test",
               "GIT_COMMITTER_EMAIL": "test@example.invalid"}  # fmt: skip
        for key, value in env.items():
            monkeypatch.setenv(key, value)  # sbatch hands the submitting shell's environment to the job
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        repo = project(folder, env)
        study_file = repo / "study.yaml"
        study_file.write_text(yaml.safe_dump({
            "name": "tiny", "factors": {"schedule": ["linear", "cosine"]}, "seeds": [0], "executor": "slurm",
            "resources": {"cpus": 1, "memory_gb": 1, "time": "00:30:00"}, "results": {"git_remote": "origin"},
            "targets": ["train"],  # the array's part of the pipeline; a whole tiny pipeline per task took 100 s
        }))  # fmt: skip
        monkeypatch.chdir(repo)
        study_dir = folder / "study"
        result = CliRunner().invoke(main, ["study", "submit", "study.yaml", "--folder", str(study_dir)])
        assert result.exit_code == 0 and "submitted 2 of 2 tasks of tiny as job array" in result.output, result.output
        deadline = time.monotonic() + 1200
        while any(r["state"] in ("pending", "running", "requeued") for r in slurm_submit.status(study_dir)):
            assert time.monotonic() < deadline, slurm_submit.status(study_dir)
            time.sleep(5)
        states = {r["task"]: r["state"] for r in slurm_submit.status(study_dir)}
        logs = "\n".join(Path(r["log"]).read_text()[-3000:] for r in slurm_submit.status(study_dir) if Path(r["log"]).is_file())
        assert states == {"tiny-schedule_linear-s0": "done", "tiny-schedule_cosine-s0": "done"}, logs
        refs = subprocess.run(["git", "ls-remote", str(folder / "origin.git")], capture_output=True, text=True, check=True).stdout
        assert all(f"/{name}" in refs for name in states), refs  # each experiment pushed to the git remote
        status = CliRunner().invoke(main, ["study", "status", "--folder", str(study_dir)])
        assert status.exit_code == 0 and "2 done" in status.output, status.output
        again = CliRunner().invoke(main, ["study", "submit", "study.yaml", "--folder", str(study_dir)])
        assert again.exit_code == 0 and "nothing to submit: all 2 tasks of tiny are done" in again.output, again.output
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_submit_refuses_uncommitted_changes_and_an_unknown_remote_before_submitting(slurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    repo = project(tmp_path, env)
    study = {"name": "tiny", "factors": {"schedule": ["linear", "cosine"]}, "seeds": [0], "executor": "slurm",
             "resources": {"cpus": 1, "memory_gb": 1, "time": "00:30:00"}, "results": {"git_remote": "upstream"}}  # fmt: skip
    (repo / "study.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.chdir(repo)
    submit = ["study", "submit", "study.yaml", "--folder", str(tmp_path / "study")]
    result = CliRunner().invoke(main, submit)
    assert result.exit_code == 1 and "results.git_remote = 'upstream': this repository has no such remote (it has origin)" in result.output
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n# edited\n")
    result = CliRunner().invoke(main, submit)
    assert result.exit_code == 1 and "commit first: each task clones HEAD, without your changes to params.yaml" in result.output
    assert slurm.run("squeue", "-h").stdout.strip() == ""  # nothing reached the scheduler
