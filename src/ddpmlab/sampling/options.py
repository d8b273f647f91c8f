"""Every sampler's name and options: a leaf module that ``config`` reads to validate ``sample.*``.

An options class is a frozen dataclass whose fields are ``sample.*`` keys with their defaults,
and whose ``problems()`` lists what is wrong with the values (one line each). The sampler
functions live in ``sampling.registry``, whose keys equal :data:`SAMPLER_OPTIONS`'s
(``tests/test_registries.py``), so config validation needs none of the samplers' code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ddpmlab.core.choices import VARIANCES


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


SAMPLER_OPTIONS: dict[str, type] = {
    "ddpm": DDPMOptions,
    "ddim": DDIMOptions,
    "euler_ancestral": NoOptions,
    "plms": NoOptions,
    "dpmpp_2m": NoOptions,
    "dpmpp_3m": NoOptions,
    "heun": NoOptions,
    "ipndm": NoOptions,
    "unipc": NoOptions,
    "unipc_3": NoOptions,
}

# The deterministic samplers that also come with the analytic first step, as "<name>_afs"
# (sampling.analytic_first_step): the same options, one network evaluation fewer.
ANALYTIC_FIRST_STEP = ("ddim", "plms", "dpmpp_2m", "dpmpp_3m", "heun", "ipndm", "unipc", "unipc_3")
SAMPLER_OPTIONS.update({f"{name}_afs": SAMPLER_OPTIONS[name] for name in ANALYTIC_FIRST_STEP})


def options_from(options: type, values: Any) -> Any:
    """An ``options`` instance read from an object or mapping with ``sample.*`` keys (SampleConfig)."""
    get = values.get if isinstance(values, dict) else lambda k, d: getattr(values, k, d)
    return options(**{f.name: get(f.name, f.default) for f in dataclasses.fields(options)})
