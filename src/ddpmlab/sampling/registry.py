"""The sampler registry, and drawing seeded images with any registered sampler.

Every sampler has one signature (``ddpmlab.sampling.ancestral``, ``ddpmlab.sampling.solvers``):

    sampler(denoiser, noise, *, callback=None, **options) -> x_0   (B, C, H, W)

A :class:`SamplerSpec` says everything the rest of ddpmlab needs about one: its function, its
options (``sampling.options``: a frozen dataclass whose fields are ``sample.*`` keys with their
defaults, validated by ``problems``), how many network evaluations N steps cost, and whether it
is stochastic. Adding a sampler is one function, one entry in :data:`SAMPLERS` and its name in
``sampling.options.SAMPLER_OPTIONS``; config validation, the run plan, the stages and the tests
read the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpmlab.core.denoiser import Denoiser, Network
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.sampling import analytic_first_step as afs
from ddpmlab.sampling.ancestral import ddim_sample, ddpm_sample, euler_ancestral_sample
from ddpmlab.sampling.guidance import check_labels, guided
from ddpmlab.sampling.options import ANALYTIC_FIRST_STEP, SAMPLER_OPTIONS, options_from
from ddpmlab.sampling.solvers import dpmpp_2m_sample, dpmpp_3m_sample, heun_sample, ipndm_sample, plms_sample
from ddpmlab.sampling.trajectory import SeededNoise, StepCallback, StepInfo
from ddpmlab.sampling.unipc import unipc_3_sample, unipc_sample


def one_per_step(steps: int) -> int:
    return steps


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: Callable[..., torch.Tensor]
    summary: str  # one line for --help, reports and params.yaml
    stochastic: bool = False
    order: int = 1  # convergence order of the deterministic solver (stochastic samplers: 1, weak)
    evaluations: Callable[[int], int] = one_per_step  # network evaluations per image for N steps, unguided
    analytic_first_step: bool = False  # the first evaluation is analytic (sampling.analytic_first_step)

    def nfe(self, steps: int, passes: int = 1) -> int:
        """Network evaluations per image for ``steps`` steps; ``passes`` = 2 with classifier-free guidance."""
        return self.evaluations(steps) * passes

    @property
    def options(self) -> type:
        """The options dataclass, kept with the sampler names in ``sampling.options`` (config reads it there)."""
        return SAMPLER_OPTIONS[self.name]

    def options_from(self, values: Any) -> Any:
        """This sampler's options read from an object or mapping with ``sample.*`` keys (SampleConfig)."""
        return options_from(self.options, values)


def heun_evaluations(steps: int) -> int:
    return 2 * steps - 1  # two per step, one on the last (Euler) step


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("ddpm", ddpm_sample, "ancestral sampling, Ho et al. 2020 Algorithm 2 (uses sample.variance)", stochastic=True),
        SamplerSpec("ddim", ddim_sample, "DDIM, Song et al. 2021 eq. 12 (uses sample.eta; 0 = deterministic)"),
        SamplerSpec("euler_ancestral", euler_ancestral_sample, "Euler ancestral (k-diffusion / diffusers), stochastic", stochastic=True),
        SamplerSpec("plms", plms_sample, "PLMS, pseudo linear multistep (Liu et al. 2022)", order=2),
        SamplerSpec("dpmpp_2m", dpmpp_2m_sample, "DPM-Solver++(2M), Lu et al. 2022", order=2),
        SamplerSpec("dpmpp_3m", dpmpp_3m_sample, "DPM-Solver++(3M), Lu et al. 2022", order=3),
        SamplerSpec("heun", heun_sample, "EDM's Heun, Karras et al. 2022 Algorithm 1 (NFE = 2N - 1)", order=2, evaluations=heun_evaluations),
        SamplerSpec("ipndm", ipndm_sample, "iPNDM, Zhang & Chen 2023, variable-step Adams-Bashforth in sigma (4 points)", order=4),
        SamplerSpec("unipc", unipc_sample, "UniPC-bh2 order 2, Zhao et al. 2023 (predictor-corrector, no extra evaluations)", order=3),
        SamplerSpec("unipc_3", unipc_3_sample, "UniPC-bh2 order 3, Zhao et al. 2023", order=4),
    )
}


def _with_analytic_first_step(spec: SamplerSpec) -> SamplerSpec:
    return SamplerSpec(
        spec.name + afs.SUFFIX, afs.with_analytic_first_step(spec.function), f"{spec.summary}; first step analytic (NFE - 1)",
        spec.stochastic, spec.order, afs.one_fewer(spec.evaluations), analytic_first_step=True,
    )  # fmt: skip


SAMPLERS.update({spec.name: spec for spec in map(_with_analytic_first_step, (SAMPLERS[n] for n in ANALYTIC_FIRST_STEP))})


def sampler_spec(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample_seeded(
    sampler: str,
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
    """Draw image i from ``seeds[i]`` with the named sampler, ``batch_size`` images at a time.

    ``process`` is the model's process on the chosen grid (``DiffusionProcess.with_steps``);
    ``options`` are the sampler's own (e.g. ``eta``). Returns (len(seeds), *image_shape) on
    ``device``. ``callback`` sees every batch's steps, with ``StepInfo.batch_start`` telling the
    batches apart. A conditional model (``network.num_classes`` > 0) draws image i of class
    ``labels[i]`` with classifier-free guidance weight ``guidance`` (:mod:`ddpmlab.sampling.guidance`).
    """
    spec = sampler_spec(sampler)
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
