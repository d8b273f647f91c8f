"""The run plan: every (sampler, spacing, steps, guidance w) one `dvc repro` samples and scores.

``sample``, ``evaluate``, ``report``, ``compare``, the FID-over-training snapshots and MLflow all
iterate over the same :class:`Run` objects; nothing else derives keys, folders or NFE.

The axes of ``sample.*`` combine one at a time around the first entry: every (sampler,
spacing, steps) at the first guidance weight w, then every other w at the first sampler,
spacing and step count (conditional models only). The first run is the headline.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.sampling.guidance import network_passes
from ddpmlab.sampling.registry import SamplerSpec, sampler_spec

DEFAULT_SPACING = "uniform"  # left out of keys, so keys from before spacings existed still match


@dataclass(frozen=True)
class Run:
    sampler: str
    steps: int
    spacing: str = DEFAULT_SPACING
    guidance: float | None = None  # None: unconditional model
    options: Any = None  # the sampler's options dataclass (SamplerSpec.options); None: its defaults

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", self.spec.options())

    @property
    def spec(self) -> SamplerSpec:
        return sampler_spec(self.sampler)

    @property
    def key(self) -> str:
        """Names the run in folders, metrics.json (``fid@<key>``), CSVs and MLflow: "ddim-10",
        "dpmpp_2m-logsnr-5", "ddpm-50-w3"."""
        parts = [self.sampler] + ([] if self.spacing == DEFAULT_SPACING else [self.spacing]) + [str(self.steps)]
        return "-".join(parts) + ("" if self.guidance is None else f"-w{self.guidance:g}")

    @property
    def folder(self) -> str:
        return self.key

    @property
    def nfe(self) -> int:
        """Network evaluations per image: the sampler's count for this many steps, twice that when guided."""
        return self.spec.nfe(self.steps, network_passes(self.guidance))

    @property
    def option_values(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def label(self, with_guidance: bool = True) -> str:
        """Human-readable: "dpmpp_2m, 10 steps (logsnr), w = 3"."""
        text = f"{self.sampler}, {self.steps} steps" + ("" if self.spacing == DEFAULT_SPACING else f" ({self.spacing})")
        return text + ("" if self.guidance is None or not with_guidance else f", w = {self.guidance:g}")

    def process(self, base: DiffusionProcess) -> DiffusionProcess:
        """The model's process on this run's grid."""
        return base.with_steps(self.steps, self.spacing)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "folder": self.folder, "sampler": self.sampler, "spacing": self.spacing, "steps": self.steps,
                "guidance": self.guidance, "nfe": self.nfe, "options": self.option_values}  # fmt: skip

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Run:
        spec = sampler_spec(entry["sampler"])
        return cls(entry["sampler"], int(entry["steps"]), entry["spacing"], entry["guidance"], spec.options_from(entry.get("options", {})))


def build_plan(sample: Any, conditional: bool) -> list[Run]:
    """The runs of ``sample`` (SampleConfig: sampler, spacing, steps, guidance lists and the samplers'
    options) for an unconditional or a conditional model; the first is the headline."""
    runs = []
    for sampler, spacing, steps in itertools.product(sample.sampler, sample.spacing, sample.steps):
        w = sample.guidance[0] if conditional else None
        runs.append(Run(sampler, steps, spacing, w, sampler_spec(sampler).options_from(sample)))
    if conditional:
        first = runs[0]
        runs += [dataclasses.replace(first, guidance=w) for w in sample.guidance[1:]]
    return runs


def guidance_sweep(runs: list[Run]) -> list[Run]:
    """The runs that vary w (same sampler, spacing and steps as the headline): the guidance trade-off."""
    head = runs[0]
    if head.guidance is None:
        return []
    return [r for r in runs if (r.sampler, r.spacing, r.steps) == (head.sampler, head.spacing, head.steps)]


def step_sweep(runs: list[Run]) -> list[Run]:
    """The runs at the headline's w: every (sampler, spacing, steps)."""
    return [r for r in runs if r.guidance == runs[0].guidance]
