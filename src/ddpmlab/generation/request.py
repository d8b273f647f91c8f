"""What one generation call draws, checked against the model before any network is built.

A :class:`Request` is a :class:`~ddpmlab.sampling.plan.Run` (sampler, grid, steps, guidance weight,
the sampler's options) plus the seeds, the classes, x_0 clipping, precision and batch size.
Image j is drawn from noise seeded by ``seeds[j]`` (``sampling.trajectory.SeededNoise``) and, for a
conditional model, asked to be class ``classes[j mod len(classes)]``: with every class in order
(the default), the `sample` stage's image i is the image of its seed
``sample.seed * 1,000,003 + i`` (listed in samples.npz).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddpmlab.core.math_names import SPACINGS
from ddpmlab.model.defaults import option_fields
from ddpmlab.model.trained import ModelInfo
from ddpmlab.nn.hardware_names import PRECISIONS
from ddpmlab.sampling.catalog import SAMPLER_CARDS
from ddpmlab.sampling.plan import Run


class BadRequest(ValueError):
    """A request the model cannot serve; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Request:
    run: Run
    seeds: tuple[int, ...]
    classes: tuple[int, ...] | None = None  # cycled over the images; None: unconditional model
    clip_x0: bool = True
    precision: str = "auto"
    batch_size: int = 500

    def labels(self) -> np.ndarray | None:
        """The class asked of image j, (N,) int64; None for an unconditional model."""
        if self.classes is None:
            return None
        return np.asarray([self.classes[j % len(self.classes)] for j in range(len(self.seeds))], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        """What was run, as generate's JSON records it."""
        run = {k: v for k, v in self.run.to_dict().items() if k != "folder"}  # the sample stage's folder name: no meaning here
        return {**run, "seeds": list(self.seeds), "classes": None if self.classes is None else list(self.classes),
                "clip_x0": self.clip_x0, "precision_asked": self.precision, "batch_size": self.batch_size}  # fmt: skip


def build_request(
    info: ModelInfo, *, sampler: str, steps: int, seeds: list[int], spacing: str = "uniform", guidance: float | None = None,
    classes: list[int] | None = None, options: dict[str, Any] | None = None, clip_x0: bool = True, precision: str = "auto",
    batch_size: int = 500,
) -> Request:  # fmt: skip
    """Check every value against the model ``info`` describes and build the request; raise
    :class:`BadRequest` naming each bad value and what is allowed. Reads no weights."""
    problems = []
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if sampler not in SAMPLER_CARDS:
        problems.append(f"sampler {sampler!r} is not registered; allowed: {', '.join(SAMPLER_CARDS)}")
    if spacing not in SPACINGS:
        problems.append(f"spacing {spacing!r} is not a step grid; allowed: {', '.join(SPACINGS)}")
    if not 1 <= steps <= info.T:
        problems.append(f"steps {steps}: the model has T = {info.T} diffusion steps; allowed: 1 to {info.T}")
    unknown = sorted(set(options) - set(option_fields()))
    if unknown:
        problems.append(f"sampler options {', '.join(unknown)} do not exist; allowed: {', '.join(option_fields())}")
    if sampler in SAMPLER_CARDS and not unknown:
        problems += SAMPLER_CARDS[sampler].options_from(options).problems()
        if options.get("variance") == "learned_range" and not info.learns_variance:
            problems.append("variance 'learned_range': the model was trained with train.learn_variance: false; allowed: fixed_large, fixed_small")
    if precision not in PRECISIONS:
        problems.append(f"precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if batch_size < 1:
        problems.append(f"batch size {batch_size}; allowed: an integer >= 1")
    if not seeds:
        problems.append("no seeds given; e.g. --seeds 0-63")
    elif min(seeds) < 0:
        problems.append(f"seed {min(seeds)}: seeds must be >= 0")
    conditional = info.num_classes > 0
    if not conditional and classes:
        problems.append(f"class {classes[0]}: the model is unconditional (trained with model.conditional: false); leave out the class")
    if not conditional and guidance:
        problems.append(f"guidance {guidance:g}: the model is unconditional; classifier-free guidance needs a model trained with model.conditional: true")
    if conditional:
        bad = [c for c in classes or [] if not 0 <= c < info.num_classes]
        if bad:
            problems.append(f"class {bad[0]}: the model knows classes 0 to {info.num_classes - 1}")
        if guidance is not None and guidance < 0:
            problems.append(f"guidance {guidance:g}; allowed: a weight w >= 0 (0 = plain conditional sampling)")
    if problems:
        raise BadRequest(problems)
    run_options = SAMPLER_CARDS[sampler].options_from(options)
    w = (guidance or 0.0) if conditional else None
    run = Run(sampler, steps, spacing, w, run_options)
    chosen = tuple(classes) if classes else tuple(range(info.num_classes))
    return Request(run, tuple(seeds), chosen if conditional else None, clip_x0, precision, batch_size)
