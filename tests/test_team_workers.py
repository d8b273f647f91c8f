"""A team on the real stack, the job-array recipe of docs/team.md: a lead runs the baseline and
pushes it (git origin + the DVC remote on SeaweedFS); two worker clones `dvc pull`, run a different
experiment each at the same time against the same MLflow server, and `dvc exp push` at the same
time; a teammate's clone `dvc exp pull`s both and finds the same model and metrics, and
`ddpmlab compare` against the server shows every run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, needs_postgresql, tiny_params

pytestmark = [needs_postgresql, pytest.mark.e2e, pytest.mark.usefixtures("team_stack", "signed_in_as_writer")]
EXPERIMENTS = {"worker1": ("w1-seed1", "train.seed=1"), "worker2": ("w2-cosine", "schedule=cosine")}


def run(cmd: list, cwd: Path, env: dict, timeout_s: float = 600) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed in {cwd}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


DVC = [sys.executable, "-m", "dvc"]
DDPMLAB = [sys.executable, "-m", "ddpmlab.cli"]


def team_env(stack, writer: tuple[str, str], home: Path) -> dict[str, str]:
    user, password = writer
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "DDPMLAB_"))}
    return env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `python` in dvc.yaml = this interpreter
        "DVC_NO_ANALYTICS": "1", "DDPMLAB_CACHE": str(home / "cache"), "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": stack.tracking_uri, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
        "GIT_AUTHOR_NAME": "ddpmlab test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "ddpmlab test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }  # fmt: skip


def clone(origin: Path, folder: Path, key_file: Path, env: dict) -> Path:
    """A teammate's clone, its DVC remote reading the key in ``key_file`` (named in .dvc/config.local)."""
    run(["git", "clone", "-q", origin, folder], folder.parent, env)
    run([*DDPMLAB, "team", "dvc-remote", "--credentials", key_file, "--repo", folder], folder, env)
    return folder


@pytest.fixture(scope="module")
def team(team_stack, team_writer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The lead's baseline in a bare git origin and the DVC remote; then both workers at once."""
    home = tmp_path_factory.mktemp("team")
    env = team_env(team_stack, team_writer, home)
    lead = home / "lead"
    # The workers' key may push to the dvc bucket; the teammate's (below) may only pull.
    key_file = team_stack.issue_dvc_key(team_writer[0], write=True, path=home / "worker.s3-credentials")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (lead / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, lead / name)
    (lead / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], lead, env)
    run([*DDPMLAB, "team", "dvc-remote", "--credentials", key_file, "--repo", lead], lead, env)
    run(["git", "add", "-A"], lead, env)
    run(["git", "commit", "-q", "-m", "tiny params, team remote"], lead, env)
    run([*DVC, "repro"], lead, env)
    run([*DVC, "push"], lead, env)
    run(["git", "commit", "-q", "-am", "baseline"], lead, env)
    origin = home / "origin.git"
    run(["git", "clone", "-q", "--bare", lead, origin], home, env)

    workers = {name: clone(origin, home / name, key_file, env) for name in EXPERIMENTS}

    def work(name: str) -> str:
        folder = workers[name]
        run([*DVC, "pull"], folder, env)
        exp_name, setting = EXPERIMENTS[name]
        return run([*DVC, "exp", "run", "-n", exp_name, "-S", setting], folder, env, timeout_s=900)

    with ThreadPoolExecutor(2) as pool:  # the two jobs of the array at the same time
        outputs = dict(zip(EXPERIMENTS, pool.map(work, EXPERIMENTS)))
    with ThreadPoolExecutor(2) as pool:  # and both push at the same time
        list(pool.map(lambda name: run([*DVC, "exp", "push", "origin", EXPERIMENTS[name][0]], workers[name], env), EXPERIMENTS))
    return {"home": home, "env": env, "origin": origin, "workers": workers, "outputs": outputs, "key_file": key_file}


def test_a_teammates_clone_gets_both_experiments_with_the_same_model_and_metrics(team, team_stack):
    env, home = team["env"], team["home"]
    reader_key = team_stack.issue_dvc_key("teammate", write=False, path=home / "teammate.s3-credentials")
    mate = clone(team["origin"], home / "teammate", reader_key, env)
    for exp_name, _ in EXPERIMENTS.values():
        run([*DVC, "exp", "pull", "origin", exp_name], mate, env)
    shown = json.loads(subprocess.run([*DVC, "exp", "show", "--json"], cwd=mate, env=env, capture_output=True, text=True, check=True).stdout)
    names = {exp["name"] for entry in shown for exp in (entry.get("experiments") or [])}
    assert {exp_name for exp_name, _ in EXPERIMENTS.values()} <= names, names
    for worker, (exp_name, _) in EXPERIMENTS.items():
        run([*DVC, "exp", "apply", exp_name], mate, env)
        run([*DVC, "pull"], mate, env)
        source = team["workers"][worker]
        for output in ("models/ddpm/model.pt", "reports/metrics.json", "reports/steps.csv"):
            assert (mate / output).read_bytes() == (source / output).read_bytes(), output


def test_every_run_of_both_workers_is_on_the_server_and_compare_shows_them(team, team_stack):
    client = MlflowClient(team_stack.tracking_uri)
    experiment = client.get_experiment_by_name("ddpmlab").experiment_id
    for worker, (exp_name, _) in EXPERIMENTS.items():
        runs = client.search_runs([experiment], f"tags.`dvc.exp_name` = '{exp_name}'")
        stages = sorted(r.data.tags["ddpmlab.stage"] for r in runs)
        assert stages == ["evaluate"] * 4 + ["train"], stages
        assert all(r.info.status == "FINISHED" for r in runs)
        (train,) = [r for r in runs if r.data.tags["ddpmlab.stage"] == "train"]
        source = team["workers"][worker]
        log = (source / "reports" / "train_log.csv").read_text().splitlines()[1:]
        assert [p.step for p in client.get_metric_history(train.info.run_id, "loss")] == [int(line.split(",")[0]) for line in log]
        by_run = json.loads((source / "reports" / "evaluation.json").read_text())["by_run"]
        evaluations = {r.data.params["run_key"]: r.data.metrics["fid"] for r in runs if r.data.tags["ddpmlab.stage"] == "evaluate"}
        assert evaluations == pytest.approx({key: row["fid"] for key, row in by_run.items()})
        assert {a.path for a in client.list_artifacts(train.info.run_id, "checkpoint")} >= {"checkpoint/model.pt"}
        assert {a.path for a in client.list_artifacts(train.info.run_id, "model")} >= {"model/MLmodel", "model/artifacts", "model/code"}
    out = team["home"] / "compare"
    run([*DDPMLAB, "compare", "--out", out], team["workers"]["worker1"], team["env"])
    text = (out / "compare.md").read_text()
    assert "cosine" in text and "seed" in text


def test_each_training_run_is_a_model_version_on_the_server_and_generate_draws_it(team, team_stack, tmp_path):
    """Every training run (the lead's baseline, both workers') registered one version of "ddpmlab" on
    the PostgreSQL-backed server, tagged with its params and headline FID; `ddpmlab generate` from a
    models:/ URI (a version, then an alias) gives the same PNG bytes as from the worker's local model."""
    client = MlflowClient(team_stack.tracking_uri)
    experiment = client.get_experiment_by_name("ddpmlab").experiment_id
    trainings = {r.info.run_id: r for r in client.search_runs([experiment], "tags.`ddpmlab.stage` = 'train'")}
    listed = client.search_model_versions("name = 'ddpmlab'")
    versions = {v.run_id: v for v in listed}
    # Every training run on the server (this recipe's and the other team tests') is exactly one version.
    assert set(versions) == set(trainings) and len(listed) == len(trainings)
    ours = {json.loads((f / "models" / "ddpm" / "train.json").read_text())["run_id"] for f in [team["home"] / "lead", *team["workers"].values()]}
    assert len(ours) == 3 and ours <= set(versions)
    folder = team["workers"]["worker2"]
    metrics = json.loads((folder / "reports" / "metrics.json").read_text())
    run_id = json.loads((folder / "models" / "ddpm" / "train.json").read_text())["run_id"]
    version = versions[run_id]
    assert (version.tags["schedule"], version.tags["T"], float(version.tags["fid"])) == ("cosine", "30", pytest.approx(metrics["fid"], rel=1e-3))
    client.set_registered_model_alias("ddpmlab", "champion", version.version)
    drawn = {}
    for name, model in [("local", "models/ddpm"), ("version", f"models:/ddpmlab/{version.version}"), ("alias", "models:/ddpmlab@champion")]:
        out = tmp_path / name
        run([*DDPMLAB, "generate", "--model", model, "--seeds", "0-7", "--steps", "5", "--precision", "fp32", "--channels-last", "false", "--device", "cpu", "--out", out], folder, team["env"])
        drawn[name] = [(out / f"{seed:06d}.png").read_bytes() for seed in range(8)]
    assert drawn["version"] == drawn["local"] and drawn["alias"] == drawn["local"]


def test_no_password_lands_in_files_git_runs_or_logs(team, team_stack, team_writer):
    """The worker's password (in its environment) and the admin's (in the stack's 0600 ini only) are
    nowhere in the clones' files (params, dvc.lock, reports, the journal), in any git object of
    any clone (experiment refs included), in the params and tags of any MLflow run, or in the
    stack's logs."""
    from conftest import TEAM_ADMIN_PASSWORD

    secrets = [team_writer[1].encode(), TEAM_ADMIN_PASSWORD.encode()]
    clones = [team["home"] / "lead", *team["workers"].values()]
    searched = 0
    for folder in clones:
        for path in folder.rglob("*"):
            if path.is_file() and ".git" not in path.parts and path.stat().st_size < 50_000_000:
                data = path.read_bytes()
                searched += 1
                assert not any(s in data for s in secrets), path
        objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=folder, capture_output=True, check=True).stdout
        assert objects and not any(s in objects for s in secrets), f"a git object of {folder}"
    for path in team_stack.logs.rglob("*"):
        if path.is_file():
            assert not any(s in path.read_bytes() for s in secrets), path
    client = MlflowClient(team_stack.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ddpmlab").experiment_id])
    values = [v for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
    assert len(runs) >= 10 and not [v for v in values if any(s.decode() in v for s in secrets)]
    assert searched > 100  # params.yaml, dvc.lock, reports/, the journal's folder, ... of every clone
