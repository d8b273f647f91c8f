"""DDP on CPU: two gloo processes against one process with the same global batch and seed.

Dropout is off in these runs so the only difference left is floating-point summation order:
a rank averages its half of the batch and DDP averages the two halves, where one process
averages all of it. That changes the gradient in the last bits (~1e-7 relative in fp32),
and Adam's normalised updates carry it into the weights at about that size per step (measured
over these 6 steps on a 2-core CPU, torch 2.15: losses within 1.2e-7 relative). The losses
must agree to 1e-4 relative, ~1000x that, and far below the step-to-step change of the loss
itself (~1e-2). A real bug (a rank training on the
wrong shard, unsynchronised gradients, a second optimizer step) moves the loss at 1e-2.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT, free_port, invoke, isolate_stores, train_config, write_tiny_params
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training.distributed import Distributed
from ddpmlab.training.loop import new_train_state, train

LOSS_RTOL = 1e-4
CFG = train_config(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=3, ema_decay=0.9)


def tiny_unet() -> UNet:
    return UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.0, norm_groups=4), 1, 8)


def tiny_images() -> torch.Tensor:
    return torch.randint(0, 256, (32, 1, 8, 8), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)


def run_training(dist: Distributed) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same run in every process: returns its loss records and final EMA weights."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    state = new_train_state(tiny_unet, CFG, seed=3, device=device, dist=dist)
    losses: list[float] = []
    train(state, DiffusionProcess.from_schedule("linear", 40), tiny_images(), CFG, dist=dist, on_log=lambda r: losses.append(r.loss))
    return losses, state.ema.model.state_dict()


def rank_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as torch_dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        losses, ema = run_training(Distributed(rank, world_size, rank))
        torch.save({"losses": losses, "ema": ema}, Path(out) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_and_keep_identical_ema(tmp_path: Path):
    single_losses, single_ema = run_training(Distributed())
    mp.spawn(rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the all-reduced mean over both shards
    assert len(single_losses) == CFG.steps
    assert ranks[0]["losses"] == pytest.approx(single_losses, rel=LOSS_RTOL)
    assert max(abs(a - b) for a, b in itertools.pairwise(single_losses)) > 100 * LOSS_RTOL * single_losses[0]  # the tolerance can tell steps apart
    for name, tensor in ranks[0]["ema"].items():
        assert torch.equal(tensor, ranks[1]["ema"][name]), f"EMA {name} differs between ranks"
        assert torch.allclose(tensor, single_ema[name], rtol=1e-3, atol=1e-5), f"EMA {name} drifted from the single-process run"


def read_losses(path: Path) -> list[float]:
    with open(path) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_train_stage_with_two_processes_matches_one_and_loads_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`train.processes: 2` relaunches the stage under torchrun; rank 0 alone writes outputs."""
    from stages import prepare
    from stages import train as train_stage

    from ddpmlab.model.trained import TrainedDiffusion

    isolate_stores(monkeypatch, tmp_path)
    single_params = write_tiny_params(tmp_path / "single.yaml", model={"dropout": 0.0}, train={"steps": 6, "log_every": 1, "checkpoint_every": 3, "precision": "fp32"})
    single = tmp_path / "single"
    invoke(prepare, "--params", single_params, "--out", single / "data")
    invoke(
        train_stage, "--params", single_params, "--data", single / "data", "--out", single / "model", "--log", single / "train_log.csv",
        "--schedule", single / "schedule.csv", "--resume-dir", single / "resume",
    )  # fmt: skip
    ddp_params = write_tiny_params(tmp_path / "ddp.yaml", model={"dropout": 0.0}, train={"steps": 6, "log_every": 1, "checkpoint_every": 3, "processes": 2, "precision": "fp32"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PYTHONPATH=str(ROOT))
    out = tmp_path / "ddp"
    command = [
        sys.executable, "stages/train.py", "--params", ddp_params, "--data", tmp_path / "single" / "data", "--out", out / "model",
        "--log", out / "train_log.csv", "--schedule", out / "schedule.csv", "--resume-dir", out / "resume",
    ]  # fmt: skip
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "relaunching under torchrun" in result.stdout

    assert read_losses(out / "train_log.csv") == pytest.approx(read_losses(tmp_path / "single" / "train_log.csv"), rel=LOSS_RTOL)
    info = json.loads((out / "model" / "train.json").read_text())
    assert info["processes"] == 2 and info["step"] == 6
    trained = TrainedDiffusion.load(out / "model" / "model.pt", torch.device("cpu"))  # a DDP checkpoint loads in one process
    assert trained.step == 6 and not any(k.startswith("module.") for k in trained.model.state_dict())
    assert not list((out / "resume").glob("*/step-*.pt"))  # finished: the resume state is gone
