import pytest
import torch

from ddpmlab.nn.unet import UNet, count_parameters, timestep_embedding
from ddpmlab.nn.unet_config import UNetConfig

DDPM_CIFAR10 = UNetConfig(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1, norm_groups=32)


def test_ddpm_cifar10_network_has_35_7M_parameters():
    # Ho et al. report 35.7M parameters for their CIFAR-10 model.
    n = count_parameters(UNet(DDPM_CIFAR10, in_channels=3, image_size=32))
    assert n == pytest.approx(35.7e6, rel=0.01)


@pytest.mark.parametrize(
    "config,channels,size",
    [
        (UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4), 1, 8),
        (UNetConfig(channels=8, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(), norm_groups=2), 3, 16),
        (UNetConfig(channels=16, channel_mult=(1,), num_res_blocks=1, attention_levels=(0,), norm_groups=8), 3, 12),
    ],
)
def test_output_has_input_shape(config, channels, size):
    model = UNet(config, channels, size)
    x = torch.randn(3, channels, size, size)
    assert model(x, torch.tensor([0, 5, 999])).shape == x.shape


def test_output_depends_on_timestep_once_zero_initialised_layers_are_trained():
    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4), 1, 8).eval()
    x = torch.randn(1, 1, 8, 8)
    assert torch.count_nonzero(model(x, torch.tensor([3]))) == 0  # zero-initialised output layer
    with torch.no_grad():  # stand-in for training: residual branches and output become non-zero
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert not torch.allclose(model(x, torch.tensor([3])), model(x, torch.tensor([700])), atol=1e-3)


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 1]), 6)
    assert emb.shape == (2, 6)
    assert torch.allclose(emb[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))  # sin(0) = 0, cos(0) = 1
    assert emb[1, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
