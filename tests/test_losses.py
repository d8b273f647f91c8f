"""Training losses against their closed forms: min-SNR-gamma weighting and the hybrid loss."""

import pytest
import torch
from torch import nn

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.losses import TrainingLoss, snr_weight

PROCESS = DiffusionProcess.from_schedule("cosine", 200)


class FixedOutput(nn.Module):
    """A 'network' whose output is a trainable tensor, whatever (x_t, t) is."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = nn.Parameter(output)

    def forward(self, x, t):
        return self.output


def batch(channels_out: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((6, 1, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 40, 100, 150, 199])
    output = torch.randn((6, channels_out, 4, 4), generator=g, dtype=torch.float64)
    return x0, t, noise, output


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_is_the_x0_error_weighted_by_min_snr_gamma(objective, gamma):
    # Hang et al. 2023: whatever the network predicts, the loss is min(SNR_t, gamma) ||x0 - x0_hat||^2.
    x0, t, noise, output = batch()
    loss = TrainingLoss(objective, "min_snr", gamma)(FixedOutput(output), PROCESS, x0, t, noise)
    xt = PROCESS.q_sample(x0, t, noise)
    x0_hat, _ = PROCESS.x0_eps_from_output(objective, output, xt, t)
    abar = PROCESS.alpha_bars[t]
    snr = abar / (1 - abar)
    expected = (snr.clamp(max=gamma) * (x0_hat - x0).square().flatten(1).mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_snr_weights_at_high_and_low_snr():
    t = torch.tensor([0, 199])  # SNR ~ 2.4e4 and ~ 0 under cosine at T = 200
    abar = PROCESS.alpha_bars[t]
    snr = abar / (1 - abar)
    assert snr[0] > 5 > snr[1]
    eps = snr_weight(PROCESS, t, "eps", 5.0).double()
    assert eps[0].item() == pytest.approx(5.0 / snr[0].item(), rel=1e-6) and eps[1].item() == pytest.approx(1.0)
    assert snr_weight(PROCESS, t, "x0", 5.0)[0].item() == pytest.approx(5.0)


def test_mse_weighting_is_plain_mse_of_the_target():
    x0, t, noise, output = batch()
    v = PROCESS.v_from_x0_eps(x0, t, noise)
    for objective, target in (("eps", noise), ("x0", x0), ("v", v)):
        loss = TrainingLoss(objective)(FixedOutput(output), PROCESS, x0, t, noise)
        assert loss.item() == pytest.approx((output - target).square().mean().item(), rel=1e-9)


def test_hybrid_loss_trains_the_mean_only_through_l_simple():
    # Improved DDPM eq. 16: L_simple + lambda L_vlb with a stop-gradient on the mean in L_vlb.
    x0, t, noise, output = batch(channels_out=2)
    hybrid = FixedOutput(output.clone())
    loss = TrainingLoss("eps", learn_variance=True, vlb_weight=0.001)(hybrid, PROCESS, x0, t, noise)
    loss.backward()
    simple = FixedOutput(output[:, :1].clone())
    TrainingLoss("eps")(simple, PROCESS, x0, t, noise).backward()
    assert torch.allclose(hybrid.output.grad[:, :1], simple.output.grad, atol=1e-12)
    assert hybrid.output.grad[:, 1:].abs().sum() > 0  # the VLB term trains the variance channels
    assert loss.item() > TrainingLoss("eps")(FixedOutput(output[:, :1]), PROCESS, x0, t, noise).item()


def test_hybrid_loss_needs_variance_channels():
    x0, t, noise, output = batch()
    with pytest.raises(ValueError, match="2 output channels, got 1"):
        TrainingLoss("eps", learn_variance=True)(FixedOutput(output), PROCESS, x0, t, noise)


def test_unknown_weighting_names_the_allowed_ones():
    with pytest.raises(ValueError, match="mse, min_snr"):
        TrainingLoss("eps", "snr")
