"""How a network runs, as opposed to what it computes: its precision, memory format and compilation.

``Execution`` is one concrete choice. ``Requested`` is what params.yaml asked for, where any field
may be ``auto`` (``nn.autotune`` measures those). ``ExecutionRecord`` is the choice a run made,
with how it was made and on which machine: written to train.json / sampling.json and as MLflow tags,
so two runs that differ in how they ran can be told apart even though their params are equal.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ddpmlab.nn.hardware_names import AUTO, PRECISIONS

# Where the chosen execution came from: the params, a probe now, a probe before (the cache), the checkpoint resumed.
EXPLICIT, PROBED, CACHED, RESUMED = "explicit", "probe", "cache", "checkpoint"


@dataclass(frozen=True)
class Execution:
    """A concrete way to run the network: precision "fp32" | "bf16" (autocast), NHWC or NCHW, compiled or eager."""

    precision: str
    channels_last: bool
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision == AUTO:
            raise ValueError("precision: auto is decided by timing the candidates (nn.autotune); an execution needs fp32 or bf16")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: got {self.precision!r}; allowed: {', '.join(PRECISIONS)} (auto only in a request)")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def label(self) -> str:
        """'bf16 nchw', 'fp32 channels_last compiled': what the probe prints and the tags hold."""
        return f"{self.precision} {'channels_last' if self.channels_last else 'nchw'}" + (" compiled" if self.compile else "")


@dataclass(frozen=True)
class Requested:
    """What the params asked for: each field a concrete value or ``"auto"``."""

    precision: str
    channels_last: bool | str
    compile: bool | str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: got {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        for name in ("channels_last", "compile"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or value == AUTO):
                raise ValueError(f"{name}: got {value!r}; allowed: auto, true, false")

    @property
    def is_explicit(self) -> bool:
        return AUTO not in (self.precision, self.channels_last, self.compile)

    def candidates(self, device: torch.device, consider_compile: bool) -> list[Execution]:
        """Every execution this request allows on ``device``: ``auto`` expands to both values (bf16 only where
        autocast supports it; compiled ones only when ``consider_compile``), in a fixed order."""
        if self.precision == AUTO:
            precisions = ["fp32", "bf16"] if bf16_autocast_available(device) else ["fp32"]
        elif self.precision == "bf16" and not bf16_autocast_available(device):
            raise ValueError(f"precision: bf16 autocast does not run on this {device.type} device; use fp32 or auto")
        else:
            precisions = [self.precision]
        layouts = [False, True] if self.channels_last == AUTO else [bool(self.channels_last)]
        compiles = ([False, True] if consider_compile else [False]) if self.compile == AUTO else [bool(self.compile)]
        return [Execution(p, c, k) for k, p, c in itertools.product(compiles, precisions, layouts)]


def bf16_autocast_available(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` at all (fast or not is the probe's question)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


@dataclass(frozen=True)
class ExecutionRecord:
    """How one network of a run ran (``task``: "train" or "sample"), how that was decided, and where.

    rates: images/s per candidate label as the probe measured them (empty when nothing was probed);
    probe_seconds: what the probe cost this run (0 when the choice came from the cache or the params).
    """

    task: str
    execution: Execution
    chosen_by: str  # EXPLICIT | PROBED | CACHED | RESUMED
    machine: dict[str, Any]
    rates: dict[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON form of train.json / sampling.json's ``execution``."""
        return {**asdict(self.execution), "label": self.execution.label, "chosen_by": self.chosen_by, **self.machine,
                "probe_images_per_s": {k: round(v, 1) for k, v in self.rates.items()}, "probe_seconds": round(self.probe_seconds, 2)}  # fmt: skip

    def tags(self) -> dict[str, str]:
        """MLflow tags ``ddpmlab.execution.<task>.<field>``: tags, not params, so they never make two configs differ."""
        values = {**asdict(self.execution), "chosen_by": self.chosen_by, **self.machine}
        return {f"{TAG_PREFIX}{self.task}.{key}": str(value) for key, value in values.items()}

    @classmethod
    def from_summary(cls, task: str, summary: dict[str, Any]) -> ExecutionRecord:
        """The record of a ``summary()``, as train.json / sampling.json hold it."""
        execution = Execution(summary["precision"], bool(summary["channels_last"]), bool(summary["compile"]))
        machine = {k: summary[k] for k in MACHINE_FIELDS if k in summary}
        return cls(task, execution, summary["chosen_by"], machine, dict(summary.get("probe_images_per_s", {})), summary.get("probe_seconds", 0.0))

    def message(self) -> str:
        """One line for the log: 'auto (train): bf16 nchw, 455 img/s (fp32 nchw 332, ...); probe 6.1 s'."""
        chosen = self.execution.label
        if self.chosen_by == EXPLICIT:
            return f"{self.task}: {chosen} (as set in params)"
        rate = self.rates.get(chosen)
        others = ", ".join(f"{label} {r:.0f}" for label, r in sorted(self.rates.items(), key=lambda item: -item[1]) if label != chosen)
        figures = (f", {rate:.0f} img/s" if rate else "") + (f" ({others})" if others else "")
        where = {PROBED: f"probe {self.probe_seconds:.1f} s", CACHED: "cached probe of this machine"}.get(self.chosen_by, "as the resumed run ran")
        return f"auto ({self.task}): {chosen}{figures}; {where}"


TAG_PREFIX = "ddpmlab.execution."
# The machine fields a record holds (``host.machine.identity``), in the order they are shown.
MACHINE_FIELDS = ("device", "processor", "cores", "threads", "torch")
