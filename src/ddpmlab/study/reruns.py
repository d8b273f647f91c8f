"""Which stages of dvc.yaml a task reruns: those whose `params` cover a key it overrides, and every
stage downstream of them (a dep on one of their outs). Read from dvc.yaml itself, so a new stage
or param is accounted for without a change here."""

from __future__ import annotations

from pathlib import Path

import yaml


def _covers(param: str, key: str) -> bool:
    """A stage param entry ("train", "sample.steps") covers an overridden key when one is the other's section."""
    return param == key or key.startswith(f"{param}.") or param.startswith(f"{key}.")


def _under(path: str, out: str) -> bool:
    path, out = path.rstrip("/"), out.rstrip("/")
    return path == out or path.startswith(f"{out}/")


def stages_to_rerun(dvc_yaml: Path, keys: list[str]) -> list[str]:
    """The stages (in dvc.yaml's order) that overriding ``keys`` makes DVC run again."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})

    def entries(stage: dict, field: str) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else str(e) for e in stage.get(field) or []]

    def produced(stage: dict) -> list[str]:
        return [*entries(stage, "outs"), *entries(stage, "metrics"), *entries(stage, "plots")]

    rerun: list[str] = []
    outs: list[str] = []
    for name, stage in stages.items():  # dvc.yaml lists stages in dependency order here; a later pass catches the rest
        direct = any(_covers(p, k) for p in entries(stage, "params") for k in keys)
        downstream = any(_under(dep, out) for dep in entries(stage, "deps") for out in outs)
        if direct or downstream:
            rerun.append(name)
            outs += produced(stage)
    changed = True
    while changed:  # stages listed before what they depend on
        changed = False
        for name, stage in stages.items():
            if name not in rerun and any(_under(dep, out) for dep in entries(stage, "deps") for out in outs):
                rerun.append(name)
                outs += produced(stage)
                changed = True
    order = list(stages)
    return sorted(rerun, key=order.index)
