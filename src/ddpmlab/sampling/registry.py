"""The sampler registry: each card of ``sampling.catalog`` bound to its function, and drawing
seeded images with a resolved sampler.

Every sampler has one signature (``ddpmlab.sampling.ancestral``, ``ddpmlab.sampling.solvers``,
``ddpmlab.sampling.unipc``):

    <name>_sample(denoiser, noise, *, callback=None, **options) -> x_0   (B, C, H, W)

The card (``sampling.catalog``) says everything else: options, order, stochasticity and NFE.
A card named ``x`` is bound to the function ``x_sample`` below; a card without a function, or a
function without a card, fails at import, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpmlab.core.denoiser import Denoiser, Network
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.sampling.analytic_first_step import with_analytic_first_step
from ddpmlab.sampling.ancestral import ddim_sample, ddpm_sample, euler_ancestral_sample
from ddpmlab.sampling.catalog import SAMPLER_CARDS, SamplerCard, sampler_card
from ddpmlab.sampling.guidance import check_labels, guided
from ddpmlab.sampling.solvers import dpmpp_2m_sample, dpmpp_3m_sample, heun_sample, ipndm_sample, plms_sample
from ddpmlab.sampling.trajectory import SeededNoise, StepCallback, StepInfo
from ddpmlab.sampling.unipc import unipc_3_sample, unipc_sample

FUNCTION_SUFFIX = "_sample"
_FUNCTIONS = (ddpm_sample, ddim_sample, euler_ancestral_sample, plms_sample, dpmpp_2m_sample, dpmpp_3m_sample, heun_sample,
              ipndm_sample, unipc_sample, unipc_3_sample)  # fmt: skip


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler's card and its function: what a :class:`~ddpmlab.sampling.plan.Run` carries, resolved once."""

    card: SamplerCard
    function: Callable[..., torch.Tensor]

    def __getattr__(self, name: str) -> Any:  # name, summary, options, order, stochastic, nfe(), options_from(): the card's
        if name.startswith("__"):
            raise AttributeError(name)  # copy and pickle probe dunders before the fields exist
        return getattr(self.card, name)


def _bind(cards: dict[str, SamplerCard]) -> dict[str, SamplerSpec]:
    functions = {f.__name__.removesuffix(FUNCTION_SUFFIX): f for f in _FUNCTIONS}
    base = {name for name, card in cards.items() if not card.base}
    if base != set(functions):
        raise RuntimeError(f"sampler cards without a function: {sorted(base - set(functions))}; functions without a card: {sorted(set(functions) - base)}")
    specs = {}
    for name, card in cards.items():
        function = functions[name] if not card.base else functions[card.base]
        specs[name] = SamplerSpec(card, with_analytic_first_step(function) if card.analytic_first_step else function)
    return specs


SAMPLERS: dict[str, SamplerSpec] = _bind(SAMPLER_CARDS)


def sampler_spec(name: str) -> SamplerSpec:
    """The registered sampler ``name``; a ValueError naming the allowed ones otherwise."""
    return SAMPLERS[sampler_card(name).name]


def sample_seeded(
    spec: SamplerSpec,
    network: Network,
    process: DiffusionProcess,
    seeds: Sequence[int],
    image_shape: Sequence[int],
    *,
    batch_size: int,
    objective: str = "eps",
    clip_x0: bool = True,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    guidance: float = 0.0,
    **options,
) -> torch.Tensor:
    """Draw image i from ``seeds[i]`` with the sampler ``spec``, ``batch_size`` images at a time.

    ``process`` is the model's process on the chosen grid (``DiffusionProcess.with_steps``);
    ``options`` are the sampler's own (e.g. ``eta``). Returns (len(seeds), *image_shape) on
    ``device``. ``callback`` sees every batch's steps, with ``StepInfo.batch_start`` telling the
    batches apart. A conditional model (``network.num_classes`` > 0) draws image i of class
    ``labels[i]`` with classifier-free guidance weight ``guidance`` (:mod:`ddpmlab.sampling.guidance`).
    """
    num_classes = getattr(network, "num_classes", 0)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        check_labels(labels, num_classes)
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels for {len(seeds)} images")
    elif guidance:
        raise ValueError(f"guidance {guidance} needs class labels and a conditional model")
    outputs = []
    for start in range(0, len(seeds), batch_size):
        noise = SeededNoise(seeds[start : start + batch_size], image_shape, device)
        batch_network = network
        if labels is not None:
            batch_network = guided(network, labels[start : start + batch_size], guidance, num_classes, image_shape[0])

        def batch_callback(info: StepInfo, start: int = start) -> None:
            info.batch_start = start
            callback(info)

        denoiser = Denoiser(batch_network, process, objective, clip_x0)
        outputs.append(spec.function(denoiser, noise, callback=batch_callback if callback else None, **options))
    return torch.cat(outputs)
