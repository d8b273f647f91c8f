"""Speed options change how fast, not what: precision, grad accumulation, pre-cast sampling networks."""

import dataclasses

import pytest
import torch

from conftest import train_config
from ddpmlab.config import ConfigError, Params, TrainConfig
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.nn.acceleration import InferenceNetwork, adamw
from ddpmlab.nn.execution import Execution
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training.loop import new_train_state, train

CPU = torch.device("cpu")
NO_DROPOUT = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4, dropout=0.0)


def tiny_data(n=64):
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def run(cfg: TrainConfig, logs=None):
    state = new_train_state(lambda: UNet(NO_DROPOUT, 1, 8), cfg, 0, CPU)
    return train(state, DiffusionProcess.from_schedule("linear", 50), tiny_data(), cfg, on_log=logs.append if logs is not None else None)


def flat(state):
    return torch.cat([p.detach().flatten() for p in state.model.parameters()])


def test_precision_names_resolve_to_autocast_dtypes():
    assert Execution("fp32", False).dtype == torch.float32
    assert Execution("bf16", False).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="auto is decided by timing"):  # measured (nn.autotune), never looked up
        Execution("auto", False)
    with pytest.raises(ValueError, match="'fp16'.*auto, fp32, bf16"):
        Execution("fp16", False)


def test_gradient_accumulation_takes_the_same_step_as_one_big_batch():
    base = train_config(steps=5, batch_size=16, lr=1e-3, warmup_steps=1, precision="fp32", log_every=5)
    whole, split = run(base), run(dataclasses.replace(base, grad_accum=4))
    # Same samples per step (drawn before the split); only the summation order of the gradient differs.
    torch.testing.assert_close(flat(split), flat(whole), rtol=0, atol=1e-5)
    assert not torch.equal(flat(whole), flat(run(dataclasses.replace(base, steps=4))))  # the check can fail


def test_bf16_training_keeps_fp32_weights_and_optimizer_state_and_learns():
    cfg = train_config(steps=60, batch_size=16, lr=2e-3, warmup_steps=5, log_every=10, precision="bf16")
    logs = []
    state = run(cfg, logs)
    assert {p.dtype for p in state.model.parameters()} == {torch.float32}
    assert {p.dtype for p in state.ema.model.parameters()} == {torch.float32}
    assert all(v.dtype == torch.float32 for s in state.optimizer.state.values() for k, v in s.items() if k != "step")
    assert logs[-1].loss < 0.7 * logs[0].loss


def test_bf16_and_fp32_training_stay_close_over_a_few_steps():
    base = train_config(steps=3, batch_size=16, lr=1e-3, warmup_steps=1, log_every=3)
    fp32, bf16 = run(dataclasses.replace(base, precision="fp32")), run(dataclasses.replace(base, precision="bf16"))
    drift = (flat(bf16) - flat(fp32)).abs().max().item()
    # Three Adam steps move each weight by about lr per step; bf16 rounding may flip a few update
    # signs (|delta| <= 2 lr each) but must not move weights further than that.
    assert 0 < drift <= 3 * 2 * base.lr


def test_fused_adamw_on_cpu():
    opt = adamw(torch.nn.Linear(2, 2).parameters(), CPU, 1e-3, 0.0)
    assert opt.defaults["fused"] is True


def test_inference_network_precasts_a_copy_and_returns_fp32():
    torch.manual_seed(0)
    model = UNet(NO_DROPOUT, 1, 8)
    for p in model.parameters():  # zero-initialised output layers would make every output 0
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 20, 49])
    with torch.no_grad():
        reference = model(x, t)
    network = InferenceNetwork(model, CPU, torch.bfloat16)
    assert {p.dtype for p in network.net.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the caller's model is untouched
    with torch.inference_mode():
        out = network(x, t)
    assert out.dtype == torch.float32 and out.shape == (4, 1, 8, 8)
    # bf16 keeps 8 mantissa bits: relative error ~2^-8 per op, a few percent through the network.
    assert (out - reference).norm() / reference.norm() < 0.05
    assert network.in_channels == 1 and network.image_size == 8


def test_speed_params_are_validated():
    with pytest.raises(ConfigError) as err:
        Params.from_dict({"train": {"precision": "half", "batch_size": 128, "grad_accum": 3}, "sample": {"precision": "fp16"}})
    text = str(err.value)
    assert "train.precision: got 'half'" in text and "sample.precision: got 'fp16'" in text
    assert "train.grad_accum: got 3" in text and "divides train.batch_size = 128" in text
