"""Samplers with exact oracles and the per-image seeding contract."""

import pytest
import torch

from ddpmlab.core.denoiser import Denoiser
from ddpmlab.core.diffusion import DiffusionProcess, spaced_timesteps
from ddpmlab.core.math_names import SPACINGS
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.sampling.registry import SAMPLERS
from ddpmlab.sampling.trajectory import SeededNoise, image_seeds


def draw(sampler, network, process, noise, *, objective="eps", clip_x0=True, callback=None, **options):
    """One batch with a registered sampler: the network wrapped in its denoiser, as sample_seeded does."""
    return SAMPLERS[sampler].function(Denoiser(network, process, objective, clip_x0), noise, callback=callback, **options)


def ddpm_sample(network, process, noise, **kwargs):
    return draw("ddpm", network, process, noise, **kwargs)


def ddim_sample(network, process, noise, **kwargs):
    return draw("ddim", network, process, noise, **kwargs)


def exact_eps_oracle(process: DiffusionProcess, point: torch.Tensor):
    """The optimal eps_theta when the data is the single point ``point``: solve eq. 4 for eps."""

    def model(xt, t):
        abar = process.alpha_bars.to(xt.dtype)[t].reshape(-1, 1, 1, 1)
        return (xt - abar.sqrt() * point) / (1 - abar).sqrt()

    return model


@pytest.mark.parametrize("schedule,T", [("linear", 100), ("cosine", 100), ("linear", 1000)])
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("clip", [True, False])
def test_single_point_data_is_recovered_exactly(schedule, T, variance, clip):
    process = DiffusionProcess.from_schedule(schedule, T)
    point = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)
    x = ddpm_sample(exact_eps_oracle(process, point), process, SeededNoise(range(3), (1, 4, 4)), variance=variance, clip_x0=clip)
    assert torch.allclose(x, point.expand(3, -1, -1, -1), atol=1e-4)


def random_unet() -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4), 1, 8)
    with torch.no_grad():  # zero-initialised output layers would make eps_theta = 0 everywhere
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def test_same_seed_same_image_regardless_of_batch_size():
    process = DiffusionProcess.from_schedule("linear", 30)
    model = random_unet()
    seeds = image_seeds(7, 0, 6)
    whole = ddpm_sample(model, process, SeededNoise(seeds, (1, 8, 8)))
    split = torch.cat([ddpm_sample(model, process, SeededNoise(seeds[i : i + 2], (1, 8, 8))) for i in (0, 2, 4)])
    alone = ddpm_sample(model, process, SeededNoise(seeds[3:4], (1, 8, 8)))
    assert torch.allclose(whole, split, atol=1e-5)
    assert torch.allclose(whole[3:4], alone, atol=1e-5)
    other = ddpm_sample(model, process, SeededNoise(image_seeds(8, 0, 6), (1, 8, 8)))
    assert not torch.allclose(whole, other, atol=1e-2)


def test_image_seeds_do_not_collide_across_base_seeds():
    a, b = set(image_seeds(0, 0, 10_000)), set(image_seeds(1, 0, 10_000))
    assert len(a) == 10_000 and not a & b


def test_callback_sees_x_T_then_every_step_in_reverse_order():
    process = DiffusionProcess.from_schedule("cosine", 12)
    seen = []
    ddpm_sample(lambda x, t: torch.zeros_like(x), process, SeededNoise([0, 1], (1, 2, 2)), callback=lambda info: seen.append((info.step, info.t, info.total)))
    assert seen == [(0, 12, 12)] + [(i + 1, 11 - i, 12) for i in range(12)]  # x_T first


def test_fixed_large_final_sample_spread_matches_data_for_gaussian_data():
    """For x_0 ~ N(0, I) the optimal eps_theta(x_t) = sqrt(1 - abar_t) x_t and the reverse
    process with sigma_t^2 = beta_t is exact in the limit; samples should have unit variance."""
    process = DiffusionProcess.from_schedule("linear", 1000)

    def model(xt, t):
        return (1 - process.alpha_bars.to(xt.dtype)[t]).sqrt().reshape(-1, 1, 1, 1) * xt

    x = ddpm_sample(model, process, SeededNoise(range(200), (1, 8, 8)), variance="fixed_large", clip_x0=False)  # 12,800 values
    assert x.mean().item() == pytest.approx(0.0, abs=0.05)
    assert x.std().item() == pytest.approx(1.0, abs=0.05)


def test_sample_seeded_batches_and_trajectory_recorder():
    from ddpmlab.sampling.registry import sample_seeded, sampler_spec
    from ddpmlab.sampling.trajectory import TrajectoryRecorder

    process = DiffusionProcess.from_schedule("cosine", 12)
    recorder = TrajectoryRecorder(count=2, columns=4, total_steps=12)  # steps 0, 4, 8, 12
    starts = []

    def callback(info):
        starts.append(info.batch_start)
        recorder(info)

    seeds = [5, 6, 7]
    zero_model = lambda x, t: torch.zeros_like(x)
    x0 = sample_seeded(sampler_spec("ddpm"), zero_model, process, seeds, (1, 2, 2), batch_size=2, callback=callback)
    assert x0.shape == (3, 1, 2, 2)
    assert sorted(set(starts)) == [0, 2] and starts.count(0) == 13  # x_T and 12 steps per batch
    strip = recorder.strip().reshape(2, 4, 1, 2, 2)
    x_T = torch.stack([torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(s)) for s in seeds[:2]])
    assert torch.equal(strip[:, 0], x_T)  # x_T is each image's first draw
    assert torch.equal(strip[:, -1], x0[:2])
    alone = ddpm_sample(zero_model, process, SeededNoise(seeds[2:], (1, 2, 2)))
    assert torch.allclose(x0[2:], alone)


def exact_oracle(process: DiffusionProcess, point: torch.Tensor, objective: str):
    """The exact network for single-point data under each parameterisation (base-process t)."""

    def model(xt, t):
        eps = process.eps_from_x0(xt, t, point.expand_as(xt).to(xt.dtype))
        return {"eps": eps, "x0": point.expand_as(xt), "v": process.v_from_x0_eps(point.expand_as(xt), t, eps)}[objective]

    return model


POINT = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)
# Every registered sampler, with each value of its option that changes the algorithm.
SAMPLER_SETTINGS = [(name, {}) for name in SAMPLERS if name not in ("ddpm", "ddim")] + [
    ("ddpm", {"variance": "fixed_large"}),
    ("ddpm", {"variance": "fixed_small"}),
    ("ddim", {"eta": 0.0}),
    ("ddim", {"eta": 1.0}),
]


# The analytic first step answers x0_hat ~ 0 where the exact one is the point. Every sampler but plms ends
# on a fresh network x0_hat and still lands on the point; plms extrapolates eps (3/2 e_new - 1/2 e_old on its
# second step), which turns that x0_hat into 3/2 the point and carries it on (its own test below).
EXACT_SETTINGS = [(name, options) for name, options in SAMPLER_SETTINGS if name != "plms_afs"]


def test_the_settings_cover_every_registered_sampler():
    assert {name for name, _ in SAMPLER_SETTINGS} == set(SAMPLERS)


@pytest.mark.parametrize("sampler,options", EXACT_SETTINGS)
@pytest.mark.parametrize("steps", [1000, 100, 10, 1])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_every_sampler_at_every_step_count_returns_the_single_data_point(sampler, options, steps, objective):
    base = DiffusionProcess.from_schedule("linear", 1000)
    process = base.respaced(spaced_timesteps(1000, steps))
    x = draw(sampler, exact_oracle(base, POINT, objective), process, SeededNoise(range(3), (1, 4, 4)), objective=objective, **options)
    if SAMPLERS[sampler].analytic_first_step and steps == 1:  # no network call at all: eq. 4's x0_hat of eps_hat = x_T
        abar = float(process.alpha_bars[-1])
        assert torch.allclose(x, (1 - (1 - abar) ** 0.5) / abar**0.5 * SeededNoise(range(3), (1, 4, 4))(), atol=5e-5)  # float32 sigma-space rounding: 2e-5
    else:
        assert torch.allclose(x, POINT.expand(3, -1, -1, -1), atol=1e-4)


def test_plms_with_the_analytic_first_step_lands_on_three_halves_of_a_single_point():
    """Two steps: x0_hat = 0 analytically, then eps' = 3/2 e_2 - 1/2 x_T with the exact e_2 gives 3/2 the point (to O(sqrt(abar_T)))."""
    base = DiffusionProcess.from_schedule("linear", 1000)
    x = draw("plms_afs", exact_oracle(base, POINT, "eps"), base.respaced(spaced_timesteps(1000, 2)), SeededNoise(range(3), (1, 4, 4)))
    assert torch.allclose(x, 1.5 * POINT.expand(3, -1, -1, -1), atol=0.02)


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name != "plms_afs"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("clip", [True, False])
def test_every_sampler_on_every_grid_returns_the_single_data_point(sampler, spacing, clip):
    base = DiffusionProcess.from_schedule("linear", 100)  # not cosine: its alpha-bar_T ~ 1e-9 turns float32 rounding into 1e-4
    x = draw(sampler, exact_oracle(base, POINT, "v"), base.with_steps(7, spacing), SeededNoise(range(2), (1, 4, 4)), objective="v", clip_x0=clip)
    assert torch.allclose(x, POINT.expand(2, -1, -1, -1), atol=5e-4)  # float32; multistep weights (55/24, ...) amplify rounding


def test_objectives_give_identical_samplers_with_an_exact_oracle():
    base = DiffusionProcess.from_schedule("cosine", 200)
    process = base.respaced(spaced_timesteps(200, 20))
    runs = {
        objective: ddpm_sample(exact_oracle(base, POINT, objective), process, SeededNoise(range(4), (1, 4, 4)), objective=objective, clip_x0=False)
        for objective in ("eps", "x0", "v")
    }
    assert torch.allclose(runs["eps"], runs["x0"], atol=1e-5) and torch.allclose(runs["eps"], runs["v"], atol=1e-5)


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("steps", [30, 10])
def test_ddim_with_eta_1_is_ddpm_with_posterior_variance(clip, steps):
    model = random_unet()
    process = DiffusionProcess.from_schedule("linear", 30).respaced(spaced_timesteps(30, steps))
    seeds = image_seeds(3, 0, 4)
    ddim = ddim_sample(model, process, SeededNoise(seeds, (1, 8, 8)), eta=1.0, clip_x0=clip)
    ddpm = ddpm_sample(model, process, SeededNoise(seeds, (1, 8, 8)), variance="fixed_small", clip_x0=clip)
    assert torch.allclose(ddim, ddpm, atol=1e-4)


def test_ddim_with_eta_0_is_deterministic_and_independent_of_batch_size():
    model = random_unet()
    process = DiffusionProcess.from_schedule("cosine", 30).respaced(spaced_timesteps(30, 10))
    seeds = image_seeds(4, 0, 4)
    whole = ddim_sample(model, process, SeededNoise(seeds, (1, 8, 8)), eta=0.0)
    again = ddim_sample(model, process, SeededNoise(seeds, (1, 8, 8)), eta=0.0)
    pieces = torch.cat([ddim_sample(model, process, SeededNoise([s], (1, 8, 8)), eta=0.0) for s in seeds])
    assert torch.equal(whole, again)
    assert torch.allclose(whole, pieces, atol=1e-5)


def test_ddim_with_large_eta_stays_finite():
    process = DiffusionProcess.from_schedule("linear", 50).respaced(spaced_timesteps(50, 5))
    x = ddim_sample(random_unet(), process, SeededNoise(range(2), (1, 8, 8)), eta=3.0)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("raw,fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_learned_range_at_its_ends_samples_like_the_fixed_variances(raw, fixed):
    # Improved DDPM eq. 15: raw -1 is the posterior variance, raw +1 is beta_t, at every t >= 2.
    model = random_unet()

    def with_variance(x, t):
        out = model(x, t)
        return torch.cat([out, torch.full_like(out, raw)], dim=1)

    process = DiffusionProcess.from_schedule("linear", 30).respaced(spaced_timesteps(30, 10))
    seeds = image_seeds(5, 0, 3)
    learned = ddpm_sample(with_variance, process, SeededNoise(seeds, (1, 8, 8)), variance="learned_range")
    reference = ddpm_sample(model, process, SeededNoise(seeds, (1, 8, 8)), variance=fixed)
    assert torch.allclose(learned, reference, atol=1e-5)
