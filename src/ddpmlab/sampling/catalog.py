"""Every sampler, described once: its name, options, order, stochasticity and NFE rule.

A leaf module (standard library only) that ``config`` reads to validate ``sample.*``, so
validating params needs none of the samplers' code. A :class:`SamplerCard` is everything about
a sampler but its function; ``sampling.registry`` binds each card to the function of the same
name (``<name>_sample``) and refuses a card without one, or a function without a card. Adding a
sampler is one function and one card.

An options class is a frozen dataclass whose fields are ``sample.*`` keys with their defaults,
and whose ``problems()`` lists what is wrong with the values (one line each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddpmlab.core.math_names import VARIANCES


@dataclass(frozen=True)
class NoOptions:
    def problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class DDPMOptions:
    variance: str = "fixed_large"  # sample.variance: the reverse process's sigma_t^2 (also the NLL bound's)

    def problems(self) -> list[str]:
        return [] if self.variance in VARIANCES else [f"sample.variance: got {self.variance!r}; allowed: {', '.join(VARIANCES)}"]


@dataclass(frozen=True)
class DDIMOptions:
    eta: float = 0.0  # sample.eta: 0 = deterministic, 1 = DDPM with the posterior variance

    def problems(self) -> list[str]:
        return [] if self.eta >= 0 else [f"sample.eta: got {self.eta!r}; allowed: a number >= 0 (0 = deterministic DDIM, 1 = DDPM-like)"]


def one_per_step(steps: int) -> int:
    return steps


def heun_evaluations(steps: int) -> int:
    return 2 * steps - 1  # two per step, one on the last (Euler) step


@dataclass(frozen=True)
class SamplerCard:
    name: str
    summary: str  # one line for --help, reports and params.yaml
    options: type = NoOptions  # its sample.* options (a frozen dataclass with problems())
    stochastic: bool = False
    order: int = 1  # convergence order of the deterministic solver (stochastic samplers: 1, weak)
    evaluations: Callable[[int], int] = one_per_step  # network evaluations per image for N steps, unguided
    analytic_first_step: bool = False  # the first evaluation is analytic (sampling.analytic_first_step)
    base: str = ""  # the sampler this one derives from (the analytic first step variants); "" for the base ones

    def nfe(self, steps: int, passes: int = 1) -> int:
        """Network evaluations per image for ``steps`` steps; ``passes`` = 2 with classifier-free guidance."""
        return self.evaluations(steps) * passes

    def options_from(self, values: Any) -> Any:
        """This sampler's options read from an object or mapping with ``sample.*`` keys (SampleConfig)."""
        return options_from(self.options, values)


BASE_CARDS = (
    SamplerCard("ddpm", "ancestral sampling, Ho et al. 2020 Algorithm 2 (uses sample.variance)", DDPMOptions, stochastic=True),
    SamplerCard("ddim", "DDIM, Song et al. 2021 eq. 12 (uses sample.eta; 0 = deterministic)", DDIMOptions),
    SamplerCard("euler_ancestral", "Euler ancestral (k-diffusion / diffusers), stochastic", stochastic=True),
    SamplerCard("plms", "PLMS, pseudo linear multistep (Liu et al. 2022)", order=2),
    SamplerCard("dpmpp_2m", "DPM-Solver++(2M), Lu et al. 2022", order=2),
    SamplerCard("dpmpp_3m", "DPM-Solver++(3M), Lu et al. 2022", order=3),
    SamplerCard("heun", "EDM's Heun, Karras et al. 2022 Algorithm 1 (NFE = 2N - 1)", order=2, evaluations=heun_evaluations),
    SamplerCard("ipndm", "iPNDM, Zhang & Chen 2023, variable-step Adams-Bashforth in sigma (4 points)", order=4),
    SamplerCard("unipc", "UniPC-bh2 order 2, Zhao et al. 2023 (predictor-corrector, no extra evaluations)", order=3),
    SamplerCard("unipc_3", "UniPC-bh2 order 3, Zhao et al. 2023", order=4),
)

# The deterministic samplers that also come with the analytic first step, as "<name>_afs"
# (sampling.analytic_first_step): the same options, one network evaluation fewer.
ANALYTIC_FIRST_STEP = ("ddim", "plms", "dpmpp_2m", "dpmpp_3m", "heun", "ipndm", "unipc", "unipc_3")
AFS_SUFFIX = "_afs"


def _one_fewer(evaluations: Callable[[int], int]) -> Callable[[int], int]:
    """The NFE of N steps with the first evaluation analytic: one fewer than the sampler's own count."""
    return lambda steps: evaluations(steps) - 1


def _with_analytic_first_step(card: SamplerCard) -> SamplerCard:
    return dataclasses.replace(
        card, name=card.name + AFS_SUFFIX, summary=f"{card.summary}; first step analytic (NFE - 1)",
        evaluations=_one_fewer(card.evaluations), analytic_first_step=True, base=card.name,
    )  # fmt: skip


SAMPLER_CARDS: dict[str, SamplerCard] = {card.name: card for card in BASE_CARDS}
SAMPLER_CARDS.update({f"{name}{AFS_SUFFIX}": _with_analytic_first_step(SAMPLER_CARDS[name]) for name in ANALYTIC_FIRST_STEP})


def sampler_card(name: str) -> SamplerCard:
    if name not in SAMPLER_CARDS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLER_CARDS)}")
    return SAMPLER_CARDS[name]


def options_from(options: type, values: Any) -> Any:
    """An ``options`` instance read from an object or mapping with ``sample.*`` keys (SampleConfig)."""
    get = values.get if isinstance(values, dict) else lambda k, d: getattr(values, k, d)
    return options(**{f.name: get(f.name, f.default) for f in dataclasses.fields(options)})
