"""Schedules against their closed forms and golden values from the papers' definitions."""

import math

import numpy as np
import pytest
import torch

from ddpmlab.core.math_names import SCHEDULES
from ddpmlab.core.schedules import cosine_betas, linear_betas, make_betas, quadratic_betas, sigmoid_betas


def test_linear_matches_ddpm_endpoints_at_T1000():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert np.allclose(np.diff(betas.numpy()), (0.02 - 1e-4) / 999)


def test_linear_alpha_bar_T_near_4e5():
    # prod_{t=1}^{1000} (1 - beta_t) with beta_t = 1e-4 + (t - 1) * (0.02 - 1e-4) / 999,
    # evaluated independently in plain Python: 4.0358e-5.
    expected = math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 999) for i in range(1000))
    alpha_bar_T = torch.cumprod(1 - linear_betas(1000), 0)[-1].item()
    assert alpha_bar_T == pytest.approx(expected, rel=1e-9)
    assert 4.0e-5 < alpha_bar_T < 4.1e-5


@pytest.mark.parametrize("T", [50, 100, 250, 4000])
def test_linear_rescaled_for_other_T_still_ends_in_noise(T):
    alpha_bar_T = torch.cumprod(1 - linear_betas(T), 0)[-1].item()
    assert alpha_bar_T < 1e-4  # as close to pure noise as T = 1000 (4e-5), up to discretisation


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_cosine_alpha_bar_follows_its_formula(T):
    s = 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    alpha_bar = torch.cumprod(1 - cosine_betas(T), 0).numpy()
    unclipped = [t for t in range(1, T + 1) if 1 - f(t) / f(t - 1) < 0.999]
    for t in unclipped:
        assert alpha_bar[t - 1] == pytest.approx(f(t) / f(0), rel=1e-9, abs=1e-15)


def test_cosine_golden_values_T1000():
    # f(t)/f(0) from Improved DDPM eq. 17, computed by hand for a few t.
    abar = torch.cumprod(1 - cosine_betas(1000), 0)
    assert abar[0].item() == pytest.approx(0.9999587158, rel=1e-9)  # t = 1
    assert abar[499].item() == pytest.approx(0.4938435904, rel=1e-9)  # t = 500
    assert abar[899].item() == pytest.approx(0.0240917241, rel=1e-8)  # t = 900
    assert cosine_betas(1000)[-1].item() == pytest.approx(0.999)  # clipped at the end


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [30, 100, 1000])
def test_betas_in_open_unit_interval_and_alpha_bar_strictly_decreasing(name, T):
    betas = make_betas(name, T)
    assert ((betas > 0) & (betas < 1)).all()
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()


def test_unknown_schedule_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown schedule .cosin.*cosine, linear, quadratic, sigmoid"):
        make_betas("cosin", 100)


def test_linear_golden_alpha_bars():
    # prod_{s <= t} (1 - beta_s) with beta rescaled by 1000 / T, evaluated in plain Python.
    abar = torch.cumprod(1 - linear_betas(1000), 0)
    for t, expected in [(1, 0.9999), (250, 0.5240853738), (500, 0.07858724288), (900, 2.752059119e-4)]:
        assert abar[t - 1].item() == pytest.approx(expected, rel=1e-9)
    abar = torch.cumprod(1 - linear_betas(100), 0)  # the default T
    for t, expected in [(1, 0.999), (50, 0.07419699672), (100, 2.039008976e-5)]:
        assert abar[t - 1].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 2, 5, 20])
def test_every_schedule_takes_any_positive_T_and_still_ends_in_noise(name, T):
    # Rescaled linear / quadratic betas would pass 1 for T <= 20; they are clipped at 0.999
    # like cosine's, so alpha-bar_T <= 1 - 0.999 whatever T is.
    betas = make_betas(name, T)
    assert betas.shape == (T,) and ((betas > 0) & (betas < 1)).all()
    assert torch.prod(1 - betas).item() <= 1e-3 + 1e-12


def test_linear_is_unclipped_from_T21():
    betas = linear_betas(21)
    assert betas[-1].item() == pytest.approx(0.02 * 1000 / 21, rel=1e-12) and betas[0].item() == pytest.approx(1e-4 * 1000 / 21, rel=1e-12)


def test_non_positive_T_is_rejected():
    with pytest.raises(ValueError, match="positive integer, got 0"):
        make_betas("linear", 0)


def test_quadratic_golden_values_T1000():
    # beta_t = (sqrt(1e-4) + (t - 1) (sqrt(0.02) - sqrt(1e-4)) / 999)^2; products evaluated in plain Python.
    betas = quadratic_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12) and betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    abar = torch.cumprod(1 - betas, 0)
    assert abar[499].item() == pytest.approx(0.3331877674, rel=1e-8)
    assert abar[-1].item() == pytest.approx(7.334124596e-4, rel=1e-8)


def test_sigmoid_golden_values_T1000():
    # abar(t) = (s(3) - s(6 t / T - 3)) / (s(3) - s(-3)), s the logistic function; hand-evaluated.
    abar = torch.cumprod(1 - sigmoid_betas(1000), 0)
    assert abar[0].item() == pytest.approx(0.9996997208, rel=1e-9)
    assert abar[249].item() == pytest.approx(0.8508535479, rel=1e-9)
    assert abar[499].item() == pytest.approx(0.5, rel=1e-9)
    assert abar[899].item() == pytest.approx(0.0394927827, rel=1e-8)
    assert sigmoid_betas(1000)[-1].item() == pytest.approx(0.999)  # abar(T) = 0: clipped
