"""Every name params.yaml may give is implemented, and every implementation has its name.

config validates against small leaf modules of names (so it imports no domain code); the
registries that do the work live in the domain modules. These tests hold the two equal, so a
new schedule, grid, sampler, source or extractor cannot be added to one and not the other.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddpmlab.config import Params, SampleConfig
from ddpmlab.core import math_names as core_choices
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.losses import TrainingLoss
from ddpmlab.core.schedules import SCHEDULE_FUNCTIONS
from ddpmlab.core.step_grids import GRID_FUNCTIONS
from ddpmlab.data.source_names import SOURCES
from ddpmlab.data.sources import LOADERS
from ddpmlab.evaluation.extractor_names import FEATURE_EXTRACTORS
from ddpmlab.evaluation.metrics import EXTRACTORS
from ddpmlab.nn.execution import Execution, Requested
from ddpmlab.nn.hardware_names import AUTO, PRECISIONS
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.sampling.catalog import SAMPLER_CARDS, SamplerCard
from ddpmlab.sampling.registry import SAMPLERS, _bind


def test_schedules_spacings_sources_samplers_and_extractors_match_their_names():
    assert tuple(SCHEDULE_FUNCTIONS) == core_choices.SCHEDULES
    assert tuple(GRID_FUNCTIONS) == core_choices.SPACINGS
    assert tuple(LOADERS) == SOURCES
    assert tuple(SAMPLERS) == tuple(SAMPLER_CARDS)
    assert set(EXTRACTORS) == set(FEATURE_EXTRACTORS)


def test_every_sampler_takes_the_options_config_validates():
    for name, spec in SAMPLERS.items():
        assert spec.card is SAMPLER_CARDS[name] and spec.options is SAMPLER_CARDS[name].options
        fields = {f.name for f in dataclasses.fields(spec.options)}
        assert fields <= {f.name for f in dataclasses.fields(SampleConfig)}, (name, fields)  # each a sample.* key


def test_a_sampler_card_without_a_function_fails_at_binding():
    """The registry binds each card to ``<name>_sample``; a card that names no function (a typo, a
    forgotten import) is refused with its name, not left to fail at the first draw."""
    with pytest.raises(RuntimeError, match="without a function: \\['dpmpp_2s'\\]"):
        _bind({**SAMPLER_CARDS, "dpmpp_2s": SamplerCard("dpmpp_2s", "not implemented")})
    without_ddim = {name: card for name, card in SAMPLER_CARDS.items() if "ddim" not in (name, card.base)}
    with pytest.raises(RuntimeError, match="functions without a card: \\['ddim'\\]"):
        _bind(without_ddim)


def test_every_objective_and_variance_is_implemented_by_the_process():
    process = DiffusionProcess.from_schedule("linear", 10)
    x = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([3, 7])
    for objective in core_choices.OBJECTIVES:
        process.x0_eps_from_output(objective, x, x, t)  # raises for an unknown objective
    for variance in core_choices.VARIANCES:
        log_var = process.reverse_log_variance(variance, t, x, x if variance == "learned_range" else None)  # broadcastable to x
        assert torch.broadcast_shapes(log_var.shape, x.shape) == x.shape and torch.isfinite(log_var).all()


def test_every_weighting_and_precision_is_accepted():
    for weighting in core_choices.WEIGHTINGS:
        TrainingLoss(weighting=weighting)
    for precision in PRECISIONS:  # every name a Requested takes; the concrete ones also make an Execution
        Requested(precision, AUTO, AUTO)
        if precision != AUTO:
            Execution(precision, False)


def test_the_unet_config_is_the_model_section():
    assert Params().model == UNetConfig()
    assert UNet(UNetConfig(), 1, 16)(torch.zeros(1, 1, 16, 16), torch.zeros(1, dtype=torch.long)).shape == (1, 1, 16, 16)
