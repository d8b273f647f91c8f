"""Class-conditional DDPM with classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import pytest
import torch

from conftest import train_config
from ddpmlab.core.denoiser import Denoiser
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.nn.unet import UNet, count_parameters
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.sampling.guidance import LabelError, class_labels, guided
from ddpmlab.sampling.registry import SAMPLERS, sample_seeded, sampler_spec
from ddpmlab.sampling.trajectory import SeededNoise, image_seeds
from ddpmlab.training.loop import new_train_state, train

NUM_CLASSES = 4
SHAPE = (1, 8, 8)


def conditional_unet(seed: int = 0, out_channels: int | None = None) -> UNet:
    torch.manual_seed(seed)
    config = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.0, norm_groups=4, conditional=True)
    net = UNet(config, 1, 8, out_channels=out_channels, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():  # the zero-initialised output convolutions, random here so labels show in the output
        for weight in net.parameters():
            if weight.dim() == 4 and not weight.any():
                weight.normal_(std=0.1)
    return net


def test_the_class_embedding_is_the_only_new_weight_and_labels_change_the_output():
    unconditional = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4), 1, 8)
    net = conditional_unet()
    assert count_parameters(net) - count_parameters(unconditional) == (NUM_CLASSES + 1) * 4 * 8  # K classes + null, emb_dim = 4 ch
    x, t = torch.randn(2, *SHAPE), torch.tensor([3, 7])
    with torch.no_grad():
        assert not torch.allclose(net(x, t, y=torch.tensor([0, 0])), net(x, t, y=torch.tensor([1, 1])))
        assert torch.equal(net(x, t), net(x, t, y=torch.full((2,), net.null_label)))  # no labels = the null class
    with pytest.raises(ValueError, match="unconditional network"):
        unconditional(x, t, y=torch.tensor([0, 1]))


def test_guidance_formula_with_a_stub_network():
    """The stub's output is the label (mean channel) and 10 x the label (variance channel): the guided
    mean must be (1 + w) y - w null, the variance the conditional pass's."""

    def stub(x, t, y):
        value = y.to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return torch.cat([value, 10 * value], dim=1)

    x, t, y, null, w = torch.zeros(3, *SHAPE), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]), 4, 2.5
    out = guided(stub, y, w, null, channels=1)(x, t)
    assert torch.allclose(out[:, 0], ((1 + w) * y - w * null).float()[:, None, None].expand(-1, 8, 8))
    assert torch.allclose(out[:, 1], (10 * y).float()[:, None, None].expand(-1, 8, 8))
    assert torch.equal(guided(stub, y, 0.0, null, channels=1)(x, t), stub(x, t, y))  # w = 0: one conditional pass


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_w_zero_is_the_plain_conditional_sampler(sampler):
    net, process = conditional_unet(), DiffusionProcess.from_schedule("linear", 20)
    seeds, labels = image_seeds(0, 0, 6), torch.as_tensor(class_labels(6, NUM_CLASSES))
    plain = SAMPLERS[sampler].function(Denoiser(lambda x, t: net(x, t, y=labels), process), SeededNoise(seeds, SHAPE))
    one_batch = sample_seeded(sampler_spec(sampler), net, process, seeds, SHAPE, batch_size=6, labels=labels, guidance=0.0)
    assert torch.equal(one_batch, plain)  # same batch, same kernels: w = 0 is exactly one conditional pass
    # Other batch sizes may pick other CPU kernels, so only rounding may differ; labels follow their images.
    two_batches = sample_seeded(sampler_spec(sampler), net, process, seeds, SHAPE, batch_size=4, labels=labels, guidance=0.0)
    assert torch.allclose(two_batches, plain, atol=1e-4)
    assert labels.tolist() == [0, 1, 2, 3, 0, 1]


def test_the_null_label_everywhere_is_the_unconditional_sampler_for_any_w():
    net, process = conditional_unet(), DiffusionProcess.from_schedule("cosine", 20)
    seeds = image_seeds(1, 0, 5)
    unconditional = SAMPLERS["ddpm"].function(Denoiser(net, process), SeededNoise(seeds, SHAPE))
    nulls = torch.full((5,), net.null_label)
    with_nulls = SAMPLERS["ddpm"].function(Denoiser(guided(net, nulls, 3.0, net.null_label, channels=1), process), SeededNoise(seeds, SHAPE))
    assert torch.allclose(with_nulls, unconditional, atol=1e-5)  # (1 + w) e - w e = e, up to rounding


@pytest.mark.parametrize("bad", [NUM_CLASSES, -1])
def test_a_label_outside_the_classes_is_a_clear_error(bad):
    net = conditional_unet()
    labels = torch.tensor([0, bad])
    with pytest.raises(LabelError, match=rf"class label {bad} is outside \[0, {NUM_CLASSES}\)"):
        sample_seeded(sampler_spec("ddpm"), net, DiffusionProcess.from_schedule("linear", 5), [0, 1], SHAPE, batch_size=2, labels=labels)


def test_labels_for_an_unconditional_model_are_an_error():
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4), 1, 8)
    with pytest.raises(LabelError, match="unconditional"):
        sample_seeded(sampler_spec("ddpm"), net, DiffusionProcess.from_schedule("linear", 5), [0], SHAPE, batch_size=1, labels=[0])


def train_conditional(p_uncond: float) -> tuple[UNet, torch.Tensor, list[torch.Tensor]]:
    """A few steps of conditional training; returns the model, its initial class embedding and every label batch it saw."""
    cfg = train_config(steps=5, batch_size=8, lr=1e-2, warmup_steps=1, log_every=5, checkpoint_every=100, ema_decay=0.9, p_uncond=p_uncond)
    state = new_train_state(lambda: conditional_unet(), cfg, seed=0, device=torch.device("cpu"))
    initial = state.model.class_embedding.weight.detach().clone()
    seen: list[torch.Tensor] = []

    def recording_loss(network, process, x0, t, noise):
        seen.append(network.keywords["y"].clone())
        xt = process.q_sample(x0, t, noise)
        return ((network(xt, t) - noise) ** 2).mean()

    images = torch.randint(0, 256, (16, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % NUM_CLASSES
    train(state, DiffusionProcess.from_schedule("linear", 20), images, cfg, loss_fn=recording_loss, labels=labels)
    return state.model, initial, seen


def test_p_uncond_one_trains_only_the_unconditional_model():
    model, initial, seen = train_conditional(p_uncond=1.0)
    assert all((y == model.null_label).all() for y in seen)
    after = model.class_embedding.weight.detach()
    assert torch.equal(after[:NUM_CLASSES], initial[:NUM_CLASSES])  # no class row ever got a gradient
    assert not torch.equal(after[NUM_CLASSES], initial[NUM_CLASSES])  # the null row learned


def test_p_uncond_drops_about_that_fraction_of_labels_and_keeps_the_rest():
    _, _, seen = train_conditional(p_uncond=0.0)
    assert all((y < NUM_CLASSES).all() for y in seen)
    model, _, seen = train_conditional(p_uncond=0.5)
    dropped = torch.cat(seen) == model.null_label
    assert 0.2 < dropped.float().mean() < 0.8  # 40 coin flips at 0.5
