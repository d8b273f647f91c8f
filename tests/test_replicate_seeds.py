"""train.seed is training randomness only: replicates share the prepared data, the reference sets,
the real-data floor and the jackknife groups bit for bit, and train different weights."""

from __future__ import annotations

import json

import torch
import yaml

from conftest import COMPARED_SCHEDULES, ROOT, invoke, write_tiny_params
from ddpmlab.model import checkpoint
from ddpmlab.model.trained import KIND


def test_prepare_does_not_read_train_seed_and_writes_the_same_bytes(tmp_path):
    from stages import prepare

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "train" not in stages["prepare"]["params"] and "train" not in stages["evaluate"]["params"]  # DVC reruns neither for it
    outputs = []
    for seed in (0, 1):
        params = write_tiny_params(tmp_path / f"seed{seed}.yaml", train={"seed": seed})
        invoke(prepare, "--params", params, "--out", tmp_path / f"data{seed}")
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / f"data{seed}").iterdir())})
    assert outputs[0] == outputs[1] and {"train.npz", "test.npz"} <= set(outputs[0])


def test_replicates_share_references_floor_and_resamples_and_train_different_weights(schedules_store):
    folder, _ = schedules_store
    first, second = folder / COMPARED_SCHEDULES[0], folder / "replicate"  # linear with train.seed 0 and 1
    evaluations = [json.loads((f / "evaluation.json").read_text()) for f in (first, second)]
    trained = [json.loads((f / "model" / "train.json").read_text())["params"]["train"]["seed"] for f in (first, second)]
    assert trained == [0, 1]
    # The floor is real images scored against the references with the protocol's subsets and resamples:
    # equal to the last digit, intervals included, only if all of those are the same.
    assert evaluations[0]["real"] == evaluations[1]["real"] and "fid_ci_low" in evaluations[0]["real"]
    assert evaluations[0]["protocol"]["reference_keys"] == evaluations[1]["protocol"]["reference_keys"]
    tensors = [checkpoint.load(f / "model" / "model.pt", KIND)["ema"] for f in (first, second)]
    assert tensors[0].keys() == tensors[1].keys()
    assert any(not torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0] if tensors[0][k].is_floating_point())
    assert evaluations[0]["fid"] != evaluations[1]["fid"]
