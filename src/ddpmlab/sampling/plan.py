"""The run plan: every (sampler, spacing, steps, guidance w) one `dvc repro` samples and scores.

``sample``, ``evaluate``, ``report``, ``compare``, the FID-over-training snapshots and MLflow all
iterate over the same :class:`Run` objects; nothing else derives keys, folders or NFE.

The axes of ``sample.*`` combine one at a time around the first entry: every (sampler,
spacing, steps) at the first guidance weight w, then every other w at the first sampler,
spacing and step count (conditional models only). The first run is the headline.

The spacing "searched" is a grid per (sampler, steps) found on the model by the `search` stage
(``sampling.grid_search``); only deterministic runs have one, so stochastic samplers skip it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.math_names import SEARCHED
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
    grid: tuple[int, ...] | None = None  # the searched grid's timestep indices (spacing "searched" only)
    spec: SamplerSpec = field(init=False, repr=False, compare=False)  # the sampler, resolved from its name once, here

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", sampler_spec(self.sampler))
        if self.options is None:
            object.__setattr__(self, "options", self.spec.options())

    @property
    def key(self) -> str:
        """Names the run in folders, steps.csv, CSVs and MLflow: "ddim-10",
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
    def deterministic(self) -> bool:
        """The same x_0 for the same x_T: a deterministic solver (DDIM only at eta = 0)."""
        return not self.spec.stochastic and getattr(self.options, "eta", 0.0) == 0

    @property
    def option_values(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def label(self, with_guidance: bool = True) -> str:
        """Human-readable: "dpmpp_2m, 10 steps (logsnr), w = 3"."""
        text = f"{self.sampler}, {self.steps} steps" + ("" if self.spacing == DEFAULT_SPACING else f" ({self.spacing})")
        return text + ("" if self.guidance is None or not with_guidance else f", w = {self.guidance:g}")

    def process(self, base: DiffusionProcess) -> DiffusionProcess:
        """The model's process on this run's grid."""
        if self.spacing != SEARCHED:
            return base.with_steps(self.steps, self.spacing)
        if self.grid is None:
            raise ValueError(f"{self.key}: no searched grid; the `search` stage finds one per deterministic sampler and step count")
        return base.respaced(list(self.grid))

    def to_dict(self) -> dict[str, Any]:
        grid = {} if self.grid is None else {"grid": list(self.grid)}
        return {"key": self.key, "folder": self.folder, "sampler": self.sampler, "spacing": self.spacing, "steps": self.steps,
                "guidance": self.guidance, "nfe": self.nfe, "options": self.option_values, **grid}  # fmt: skip

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Run:
        grid = tuple(entry["grid"]) if entry.get("grid") is not None else None
        options = sampler_spec(entry["sampler"]).options_from(entry.get("options", {}))
        return cls(entry["sampler"], int(entry["steps"]), entry["spacing"], entry["guidance"], options, grid)


def build_plan(sample: Any, conditional: bool, searched: dict[tuple[str, int], list[int]] | None = None) -> list[Run]:
    """The runs of ``sample`` (SampleConfig: sampler, spacing, steps, guidance lists and the samplers'
    options) for an unconditional or a conditional model; the first is the headline. ``searched``:
    (sampler, steps) -> grid from the `search` stage, needed when sample.spacing has "searched"."""
    runs = []
    for sampler, spacing, steps in itertools.product(sample.sampler, sample.spacing, sample.steps):
        w = sample.guidance[0] if conditional else None
        run = Run(sampler, steps, spacing, w, sampler_spec(sampler).options_from(sample))
        if spacing == SEARCHED:
            if not run.deterministic:
                continue
            if (sampler, steps) not in (searched or {}):
                raise ValueError(f"no searched grid for {sampler} at {steps} steps; `dvc repro search` finds them (sample.spacing has {SEARCHED!r})")
            run = dataclasses.replace(run, grid=tuple(searched[(sampler, steps)]))
        runs.append(run)
    if conditional:
        first = runs[0]
        runs += [dataclasses.replace(first, guidance=w) for w in sample.guidance[1:]]
    return runs


def search_targets(sample: Any, conditional: bool) -> list[Run]:
    """The runs the `search` stage finds grids for: every deterministic sampler x step count of
    ``sample`` at the headline guidance weight, when sample.spacing has "searched" (else none)."""
    if SEARCHED not in sample.spacing:
        return []
    w = sample.guidance[0] if conditional else None
    runs = [Run(s, n, SEARCHED, w, sampler_spec(s).options_from(sample)) for s, n in itertools.product(sample.sampler, sample.steps)]
    return [run for run in runs if run.deterministic]


def guidance_sweep(runs: list[Run]) -> list[Run]:
    """The runs that vary w (same sampler, spacing and steps as the headline): the guidance trade-off."""
    head = runs[0]
    if head.guidance is None:
        return []
    return [r for r in runs if (r.sampler, r.spacing, r.steps) == (head.sampler, head.spacing, head.steps)]


def step_sweep(runs: list[Run]) -> list[Run]:
    """The runs at the headline's w: every (sampler, spacing, steps)."""
    return [r for r in runs if r.guidance == runs[0].guidance]
