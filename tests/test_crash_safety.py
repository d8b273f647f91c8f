"""Crashes lose nothing: kill -9 at random points and resume to bit-identical weights; a
diverging run stops at the step that diverged and leaves the last checkpoint intact; a bad
or foreign checkpoint is a one-line error."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from stages import prepare
from stages import train as train_stage

from conftest import ROOT, invoke, isolate_stores, write_tiny_params
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.model import checkpoint
from ddpmlab.model.trained import KIND, TrainedDiffusion
from ddpmlab.training import resume


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    invoke(prepare, "--params", write_tiny_params(folder / "params.yaml"), "--out", folder / "data")
    return folder / "data"


def train_command(params: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "stages/train.py", "--params", str(params), "--data", str(data), "--out", str(out / "model"),
        "--log", str(out / "train_log.csv"), "--schedule", str(out / "schedule.csv"), "--resume-dir", str(out / "resume"),
    ]  # fmt: skip


def stage_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    # One thread: oneDNN's reductions are then the same in every process, so bit-identity is a fair demand.
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def kill_at_random_points(command: list[str], env: dict, resume: Path, kills: int, rng: random.Random) -> list[str]:
    """Start the stage, SIGKILL it a random moment after it writes a new checkpoint, restart; ``kills`` times,
    then let it finish. Returns each run's output."""
    outputs = []
    for _ in range(kills):
        seen = set(resume.glob("*/step-*.pt"))
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while process.poll() is None and not set(resume.glob("*/step-*.pt")) - seen and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # mid-step, mid-write or mid-log: wherever it lands
        process.send_signal(signal.SIGKILL)
        outputs.append(process.communicate()[0])
        assert process.returncode == -signal.SIGKILL, f"finished before it could be killed:\n{outputs[-1][-2000:]}"
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return [*outputs, finished.stdout]


def test_killed_three_times_and_resumed_ends_bit_identical(prepared: Path, tmp_path: Path):
    params = write_tiny_params(
        tmp_path / "params.yaml", train={"steps": 160, "batch_size": 32, "log_every": 5, "checkpoint_every": 10, "keep_checkpoints": 2}
    )
    env = stage_env(tmp_path)
    straight = subprocess.run(train_command(params, prepared, tmp_path / "straight"), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    outputs = kill_at_random_points(train_command(params, prepared, killed), env, killed / "resume", kills=3, rng=random.Random(0))
    resumed_from = [int(line.split("from step ")[1].split()[0]) for out in outputs for line in out.splitlines() if "resuming training from step" in line]
    assert len(resumed_from) >= 3 and resumed_from == sorted(resumed_from)  # every restart went on from a checkpoint

    a = torch.load(tmp_path / "straight" / "model" / "model.pt", weights_only=True)
    b = torch.load(killed / "model" / "model.pt", weights_only=True)
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after three kill -9s"
    assert [n.name for n in sorted((killed / "model" / "snapshots").iterdir())] == [f"step-{s:07d}.pt" for s in range(10, 160, 10)]

    def loss_column(path: Path) -> list[tuple[str, str]]:
        return [tuple(row.split(",")[:2]) for row in path.read_text().splitlines()]  # step, loss (not throughput)

    assert loss_column(killed / "train_log.csv") == loss_column(tmp_path / "straight" / "train_log.csv")
    # MLflow holds the same curve, each step once: the steps replayed after a kill are not logged twice.
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    histories = {}
    for name in ("straight", "killed"):
        run_id = json.loads((tmp_path / name / "model" / "train.json").read_text())["run_id"]
        histories[name] = [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert [step for step, _ in histories["killed"]] == list(range(5, 161, 5))
    assert histories["killed"] == histories["straight"]
    assert not list((killed / "resume").glob("*/step-*.pt"))


def test_divergence_stops_at_its_step_and_keeps_the_last_checkpoint(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_stores(monkeypatch, tmp_path)
    explicit = {"precision": "fp32", "channels_last": False, "compile": False}  # no `auto` probe: it would call the loss too
    params = write_tiny_params(tmp_path / "params.yaml", train={"steps": 10, "log_every": 2, "checkpoint_every": 2, "keep_checkpoints": 2, **explicit})
    calls = itertools.count(1)
    real_loss = TrainingLoss.__call__

    def nan_from_step_5(self, *args, **kwargs):
        loss = real_loss(self, *args, **kwargs)
        return loss * float("nan") if next(calls) >= 5 else loss  # one call per step (grad_accum 1)

    monkeypatch.setattr(TrainingLoss, "__call__", nan_from_step_5)
    args = ["--params", params, "--data", prepared, "--out", tmp_path / "model", "--log", tmp_path / "log.csv",
            "--schedule", tmp_path / "schedule.csv", "--resume-dir", tmp_path / "resume"]  # fmt: skip
    result = CliRunner().invoke(train_stage.main, [str(a) for a in args])
    assert result.exit_code == 1
    assert "non-finite loss or gradient norm at step 5 (caught at step 6)" in result.output

    saved = sorted(p.name for p in (tmp_path / "resume").glob("*/step-*.pt"))
    assert saved == ["step-0000002.pt", "step-0000004.pt"]  # the newest 2; nothing written after the divergence
    last = checkpoint.load(next((tmp_path / "resume").glob("*/step-0000004.pt")), KIND)
    assert last["step"] == 4 and all(torch.isfinite(t).all() for t in last["model"].values())
    assert not (tmp_path / "model" / "model.pt").exists()


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path):
    folder = tmp_path / "run"
    checkpoint.save({"step": 4}, folder / "step-0000004.pt", KIND)
    whole = (folder / "step-0000004.pt").read_bytes()
    (folder / "step-0000006.pt").write_bytes(whole[: len(whole) // 2])  # half a file, e.g. a disk that filled up
    (folder / "step-0000007.pt").write_bytes(b"")  # an empty file
    (folder / "step-0000008.pt").write_bytes(b"abc")  # garbage
    (folder / ".step-0000009.pt.tmp").write_bytes(b"interrupted write")  # never picked: not renamed into place
    warnings: list[str] = []
    payload, path = resume.latest_checkpoint(folder, warnings.append)
    assert path == folder / "step-0000004.pt" and payload["step"] == 4
    assert len(warnings) == 3 and all("skipping unreadable checkpoint" in w for w in warnings)


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path: Path):
    for step in (9_999_999, 10_000_000, 10_000_001):
        checkpoint.save({"step": step}, tmp_path / f"step-{step:07d}.pt", KIND)
    resume.prune_checkpoints(tmp_path, keep=2)
    assert sorted(int(p.stem.removeprefix("step-")) for p in tmp_path.glob("step-*.pt")) == [10_000_000, 10_000_001]


def test_foreign_or_mismatched_checkpoints_are_one_line_errors(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_stores(monkeypatch, tmp_path)
    params = write_tiny_params(tmp_path / "params.yaml", train={"steps": 2, "checkpoint_every": 2})
    invoke(train_stage, "--params", params, "--data", prepared, "--out", tmp_path / "model", "--log", tmp_path / "log.csv",
           "--schedule", tmp_path / "schedule.csv", "--resume-dir", tmp_path / "resume")  # fmt: skip
    good = torch.load(tmp_path / "model" / "model.pt", weights_only=True)

    edited = dict(good, params={**good["params"], "model": {**good["params"]["model"], "channels": 16}})
    torch.save(edited, tmp_path / "other_config.pt")
    with pytest.raises(checkpoint.CheckpointError, match="weights do not fit the network its params describe"):
        TrainedDiffusion.load(tmp_path / "other_config.pt", torch.device("cpu"))

    torch.save(dict(good, format_version=99, ddpmlab_version="9.0"), tmp_path / "future.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"format 99 \(ddpmlab 9.0\)"):
        TrainedDiffusion.load(tmp_path / "future.pt", torch.device("cpu"))

    torch.save({"weights": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")  # loading it would run pickled code
    with pytest.raises(checkpoint.CheckpointError, match="not a readable ddpmlab checkpoint"):
        TrainedDiffusion.load(tmp_path / "pickled_module.pt", torch.device("cpu"))
