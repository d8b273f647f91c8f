"""dvc.yaml lists, for every stage, exactly the ddpmlab code the stage runs.

A stage's code deps are its script and the import closure of that script within ddpmlab
(ddpmlab.code_deps: imports inside functions count, ``if TYPE_CHECKING:`` ones do not). A module
missing from the list leaves a stale output that DVC calls up to date after a change to it; an
extra one reruns the stage for nothing. The closure is computed afresh, so a new module, or a new
import, fails here until dvc.yaml lists it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from stages import train

from ddpmlab import code_deps

ROOT = Path(__file__).parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SCRIPT = re.compile(r"\bpython\s+(stages/\w+\.py)\b")
SCRIPT_STAGES = {name: m.group(1) for name, stage in STAGES.items() if (m := SCRIPT.search(stage["cmd"]))}


def _listed_code(stage: str) -> set[str]:
    return {dep for dep in STAGES[stage]["deps"] if dep.startswith("src/ddpmlab/")}


def _closure(*scripts: str) -> set[str]:
    return {f"src/ddpmlab/{path.name}" for path in code_deps.import_closure(*(ROOT / s for s in scripts))}


def test_every_stage_runs_a_stage_script():
    assert SCRIPT_STAGES and set(SCRIPT_STAGES) == set(STAGES), f"stages whose cmd runs no stages/*.py: {sorted(set(STAGES) - set(SCRIPT_STAGES))}"
    assert code_deps.PACKAGE_DIR == (ROOT / "src" / "ddpmlab").resolve(), "ddpmlab is not installed from this checkout (pip install -e .)"


@pytest.mark.parametrize("stage", sorted(SCRIPT_STAGES))
def test_a_stages_code_deps_are_its_scripts_import_closure(stage):
    script = SCRIPT_STAGES[stage]
    assert script in STAGES[stage]["deps"], f"dvc.yaml's {stage} stage does not list its own script {script}"
    runs, listed = _closure(script), _listed_code(stage)
    missing, extra = sorted(runs - listed), sorted(listed - runs)
    assert not missing and not extra, (
        f"dvc.yaml's {stage} deps disagree with what {script} imports:\n"
        f"  missing (imported, not listed): {missing}\n"
        f"  extra (listed, not imported): {extra}\n"
        f"  (`python -m ddpmlab.code_deps {script}` prints the deps to list)"
    )


def test_the_resume_fingerprint_covers_the_training_code_dvc_lists():
    """Code train runs changes what training computes: DVC reruns `train` when it changes
    (above), and a resumable checkpoint written by other code must not be resumed, so the
    fingerprint covers the same files, the network's code (unet with its CPU kernels) and the
    loss (built by config) among them."""
    fingerprinted = {path.relative_to(ROOT.resolve()).as_posix() for path in train.TRAINING_CODE}
    assert fingerprinted == {SCRIPT_STAGES["train"]} | _listed_code("train")
    network_and_loss = {"unet", "cpu_kernels", "config", "losses", "diffusion", "schedules", "training", "data"}
    assert {f"src/ddpmlab/{m}.py" for m in network_and_loss} <= fingerprinted


@pytest.mark.parametrize("stage", ["sample", "evaluate"])
def test_stages_that_run_the_trained_network_depend_on_its_code(stage):
    """sample (the samples) and evaluate (the NLL) run the saved network and its diffusion process,
    with cpu_kernels on the bf16 CPU path, and trained loads and casts the EMA weights: a change to
    that code must rerun them, even when it leaves the trained weights alone."""
    network = {"unet", "cpu_kernels", "diffusion", "schedules", "trained", "acceleration"}
    assert {f"src/ddpmlab/{m}.py" for m in network} <= _closure(SCRIPT_STAGES[stage]) == _listed_code(stage)


def test_the_closure_follows_lazy_imports_and_skips_type_checking_ones(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "import ddpmlab.unet\n"
        "if TYPE_CHECKING:\n"
        "    from ddpmlab.training import TrainState\n"
        "def late():\n"
        "    from ddpmlab import schedules\n"
    )
    assert {path.stem for path in code_deps.import_closure(script)} == {"unet", "cpu_kernels", "schedules"}
