"""The forward process and posterior against Monte Carlo and numerically integrated Bayes' rule."""

import itertools
import math

import numpy as np
import pytest
import torch

from ddpmlab.core.diffusion import DiffusionProcess, spaced_timesteps
from ddpmlab.core.losses import simple_loss


@pytest.fixture(scope="module")
def process():
    return DiffusionProcess.from_schedule("linear", 1000)


@pytest.mark.parametrize("t_index", [0, 99, 499, 999])
def test_q_sample_moments_by_monte_carlo(process, t_index):
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t_index), dtype=torch.float64)
    t = torch.full((n,), t_index)
    xt = process.q_sample(x0, t, noise)
    abar = math.prod(1 - b for b in process.betas[: t_index + 1].tolist())
    se = math.sqrt((1 - abar) / n)
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=5 * se)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.02, abs=1e-6)


@pytest.mark.parametrize("t_index", [1, 10, 300, 999])
def test_posterior_matches_bayes_rule_numerically(process, t_index):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), integrated on a fine grid."""
    x0, xt = 0.3, -0.4
    beta = process.betas[t_index].item()
    abar_prev = process.alpha_bars[t_index - 1].item()
    grid = np.linspace(-6, 6, 400_001)
    log_lik = -((xt - math.sqrt(1 - beta) * grid) ** 2) / (2 * beta)
    log_prior = -((grid - math.sqrt(abar_prev) * x0) ** 2) / (2 * (1 - abar_prev))
    w = np.exp(log_lik + log_prior - (log_lik + log_prior).max())
    w /= w.sum()
    mean = (w * grid).sum()
    var = (w * (grid - mean) ** 2).sum()

    t = torch.tensor([t_index])
    code_mean = process.q_posterior_mean(torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[xt]], dtype=torch.float64), t)
    assert code_mean.item() == pytest.approx(mean, abs=1e-6)
    assert process.posterior_variance[t_index].item() == pytest.approx(var, rel=1e-4)


def test_posterior_at_t1_returns_x0_exactly(process):
    # alpha-bar_0 = 1, so q(x_0 | x_1, x_0) is a point mass at x_0.
    assert process.posterior_variance[0].item() == 0.0
    assert process.posterior_mean_coef_x0[0].item() == pytest.approx(1.0)
    assert process.posterior_mean_coef_xt[0].item() == pytest.approx(0.0, abs=1e-12)


def test_x0_from_eps_inverts_q_sample(process):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((8, 1, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (8,), generator=g)
    assert torch.allclose(process.x0_from_eps(process.q_sample(x0, t, eps), t, eps), x0, atol=1e-9)


def test_exact_noise_oracle_has_zero_loss(process):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((16, 1, 4, 4), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)

    def oracle(xt, t):  # solves eq. 4 for eps given the true x0
        abar = process.alpha_bars[t].float().reshape(-1, 1, 1, 1)
        return (xt - abar.sqrt() * x0) / (1 - abar).sqrt()

    assert simple_loss(oracle, process, x0, t, noise).item() < 1e-10
    assert simple_loss(lambda xt, t: torch.zeros_like(xt), process, x0, t, noise).item() > 0.5


def test_reverse_variances(process):
    # t >= 2: sigma_t^2 = beta_t and tilde-beta_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (eq. 7).
    abar = process.alpha_bars
    tilde = process.betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])
    assert torch.equal(process.reverse_variance("fixed_large")[1:], process.betas[1:])
    assert torch.allclose(process.reverse_variance("fixed_small")[1:], tilde, rtol=1e-12, atol=0)
    assert (tilde < process.betas[1:]).all()
    # t = 1: tilde-beta_1 = 0 (log -inf); both fixed variances use tilde-beta_2 there (decoder only).
    assert process.posterior_variance[0].item() == 0.0
    for kind in ("fixed_large", "fixed_small"):
        assert process.reverse_variance(kind)[0].item() == pytest.approx(tilde[0].item(), rel=1e-12)
    with pytest.raises(ValueError, match="fixed_large, fixed_small"):
        process.reverse_variance("learned_range")


def test_learned_range_spans_posterior_variance_to_beta(process):
    # Improved DDPM eq. 15: raw -1 -> tilde-beta_t, raw +1 -> beta_t, raw 0 -> their geometric mean.
    t = torch.arange(1, 1000, 37)
    tilde = (process.betas * (1 - process.alpha_bars_prev) / (1 - process.alpha_bars))[t]
    beta = process.betas[t]

    def variance(raw: float) -> torch.Tensor:
        return process.learned_log_variance(torch.full((len(t), 1, 2, 2), raw, dtype=torch.float64), t).exp()[:, 0, 0, 0]

    assert torch.allclose(variance(-1.0), tilde, rtol=1e-10)
    assert torch.allclose(variance(1.0), beta, rtol=1e-10)
    assert torch.allclose(variance(0.0), (tilde * beta).sqrt(), rtol=1e-10)
    grid = [variance(r) for r in torch.linspace(-1, 1, 9).tolist()]
    assert all(((a < b) & (a >= tilde * (1 - 1e-12)) & (b <= beta * (1 + 1e-12))).all() for a, b in itertools.pairwise(grid))


def test_learned_range_needs_variance_channels(process):
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([5, 9])
    _, log_var, _ = process.p_mean_log_variance(torch.cat([x, -torch.ones_like(x)], 1), x, t, objective="eps", variance="learned_range")
    assert torch.allclose(log_var.exp()[:, 0, 0, 0], process.posterior_variance[t], rtol=1e-10)
    with pytest.raises(ValueError, match="train.learn_variance"):
        process.p_mean_log_variance(x, x, t, objective="eps", variance="learned_range")


def test_eps_x0_v_conversions_are_exact_inverses(process):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand((16, 1, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (16,), generator=g)
    xt = process.q_sample(x0, t, eps)
    v = process.v_from_x0_eps(x0, t, eps)
    for objective, output in (("eps", eps), ("x0", x0), ("v", v)):
        x0_hat, eps_hat = process.x0_eps_from_output(objective, output, xt, t)
        assert torch.allclose(x0_hat, x0, atol=1e-6) and torch.allclose(eps_hat, eps, atol=1e-9), objective
    assert torch.allclose(process.eps_from_x0(xt, t, x0), eps, atol=1e-9)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_exact_oracle_has_zero_loss_for_every_objective(process, objective):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand((8, 1, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (8,), generator=g)

    def oracle(xt, t):
        eps = process.eps_from_x0(xt, t, x0)
        return {"eps": eps, "x0": x0, "v": process.v_from_x0_eps(x0, t, eps)}[objective]

    assert simple_loss(oracle, process, x0, t, noise, objective).item() < 1e-12


@pytest.mark.parametrize("T,steps", [(1000, 1000), (1000, 250), (1000, 50), (1000, 1), (100, 7), (30, 29)])
def test_respacing_keeps_the_chosen_alpha_bars_exactly(T, steps):
    base = DiffusionProcess.from_schedule("cosine", T)
    kept = spaced_timesteps(T, steps)
    assert len(set(kept)) == steps and kept == sorted(kept) and kept[-1] == T - 1
    respaced = base.respaced(kept)
    assert respaced.T == steps
    # exact up to float64 rounding of 1 - (1 - alpha) where alpha is tiny (cosine near t = T)
    assert torch.allclose(respaced.alpha_bars, base.alpha_bars[kept], rtol=1e-12, atol=1e-15)
    assert torch.equal(respaced.model_timesteps, torch.tensor(kept))
    assert ((respaced.betas > 0) & (respaced.betas < 1)).all()


def test_bad_respacing_is_rejected():
    base = DiffusionProcess.from_schedule("linear", 100)
    with pytest.raises(ValueError, match="strictly increasing"):
        base.respaced([5, 5, 9])
    with pytest.raises(ValueError, match=r"sampling steps must be in \[1, T = 100\]"):
        spaced_timesteps(100, 101)
