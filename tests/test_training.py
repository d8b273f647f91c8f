import pytest
import torch

from conftest import train_config
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training.loop import EMA, TrainingDiverged, new_train_state, train

TINY = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4, dropout=0.1)


def tiny_data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def make_state(cfg, seed=0):
    return new_train_state(lambda: UNet(TINY, 1, 8), cfg, seed, torch.device("cpu"))


def test_initial_weights_depend_on_the_seed_alone():
    cfg = train_config()
    torch.manual_seed(1)
    a = make_state(cfg, seed=3)
    torch.manual_seed(2)  # whatever the global RNG did before must not matter
    b = make_state(cfg, seed=3)
    c = make_state(cfg, seed=4)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))


def weights(state):
    return torch.cat([p.detach().flatten() for p in state.model.parameters()] + [p.flatten() for p in state.ema.model.parameters()])


def test_ema_warms_up_then_holds_its_decay():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(100_000) == 0.999


def test_ema_update_is_the_exponential_average():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.model.weight.fill_(0.0)
    ema.update(model, num_updates=1000)  # decay 0.5 after warm-up
    assert ema.model.weight.item() == pytest.approx(0.5)


def test_loss_decreases_on_a_tiny_problem():
    cfg = train_config(steps=60, batch_size=16, lr=2e-3, warmup_steps=5, log_every=10, checkpoint_every=1000)
    logs = []
    train(make_state(cfg), DiffusionProcess.from_schedule("linear", 50), tiny_data(), cfg, on_log=logs.append)
    assert [r.step for r in logs] == [10, 20, 30, 40, 50, 60]
    assert logs[-1].loss < 0.7 * logs[0].loss


class SimulatedCrash(Exception):
    pass


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path):
    cfg = train_config(steps=8, batch_size=4, lr=1e-3, warmup_steps=3, log_every=2, checkpoint_every=3)
    process = DiffusionProcess.from_schedule("cosine", 40)
    straight = train(make_state(cfg), process, tiny_data(), cfg)

    saved = tmp_path / "state.pt"

    def checkpoint_then_crash(state):
        torch.save(state.state_dict(), saved)
        raise SimulatedCrash  # right after the step-3 checkpoint

    with pytest.raises(SimulatedCrash):
        train(make_state(cfg), process, tiny_data(), cfg, on_checkpoint=checkpoint_then_crash)
    resumed = make_state(cfg, seed=999)  # a different seed: everything must come from the checkpoint
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    assert resumed.step == 3
    train(resumed, process, tiny_data(), cfg)
    assert torch.equal(weights(straight), weights(resumed))


def test_non_finite_loss_stops_training_with_the_step():
    cfg = train_config(steps=10, batch_size=4, lr=1e-3, log_every=2, checkpoint_every=100)
    state = make_state(cfg)
    with torch.no_grad():
        state.model.conv_in.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite loss or gradient norm at step 1 "):
        train(state, DiffusionProcess.from_schedule("linear", 50), tiny_data(), cfg)


def test_hflip_mirrors_about_half_of_each_batch_and_is_off_by_default():
    """A recording loss sees the x_0 batches: with hflip each image is either itself or its exact mirror."""
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(16, 1, 1, 1)  # one asymmetric image
    seen = []

    def recording_loss(model, process, x0, t, noise):
        seen.append(x0.detach().clone())
        return model(x0, t).pow(2).mean()

    cfg = train_config(steps=20, batch_size=16, log_every=10, checkpoint_every=100)
    process = DiffusionProcess.from_schedule("linear", 10)
    for flag in (False, True):
        seen.clear()
        train(make_state(cfg), process, images, cfg, loss_fn=recording_loss, hflip=flag)
        batches = torch.cat(seen)
        original = images[:1].float().div(127.5).sub(1)
        is_original = (batches == original).flatten(1).all(1)
        is_mirror = (batches == original.flip(-1)).flatten(1).all(1)
        assert (is_original | is_mirror).all()
        mirrored = is_mirror.float().mean().item()
        assert mirrored == 0.0 if not flag else 0.4 < mirrored < 0.6  # 320 fair coin flips
