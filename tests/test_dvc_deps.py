"""dvc.yaml lists, for every stage, exactly the ddpmlab code the stage runs.

A stage's code deps are its script and the import closure of that script within ddpmlab
(ddpmlab.pipeline.code_deps: imports inside functions count, ``if TYPE_CHECKING:`` ones do not). A module
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

from ddpmlab.pipeline import code_deps

ROOT = Path(__file__).parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SCRIPT = re.compile(r"\bpython\s+(stages/\w+\.py)\b")
SCRIPT_STAGES = {name: m.group(1) for name, stage in STAGES.items() if (m := SCRIPT.search(stage["cmd"]))}
PACKAGE = "src/ddpmlab/"


def _listed_code(stage: str) -> set[str]:
    return {dep for dep in STAGES[stage]["deps"] if dep.startswith(PACKAGE)}


def _relative(path: Path) -> str:
    return path.resolve().relative_to(ROOT.resolve()).as_posix()


def _closure(*scripts: str) -> set[str]:
    return {_relative(path) for path in code_deps.import_closure(*(ROOT / s for s in scripts))}


def _code(*modules: str) -> set[str]:
    return {f"{PACKAGE}{module}.py" for module in modules}


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
        f"  (`python -m ddpmlab.pipeline.code_deps {script}` prints the deps to list)"
    )


def test_the_resume_fingerprint_covers_the_training_code_dvc_lists():
    """Code train runs changes what training computes: DVC reruns `train` when it changes
    (above), and a resumable checkpoint written by other code must not be resumed, so the
    fingerprint covers the same files, the network's code (unet with its CPU kernels) and the
    loss among them."""
    fingerprinted = {_relative(path) for path in train.TRAINING_CODE}
    assert fingerprinted == {SCRIPT_STAGES["train"]} | _listed_code("train")
    network_and_loss = _code("nn/unet", "nn/cpu_kernels", "nn/unet_config", "config", "core/losses", "core/diffusion", "core/schedules", "training/loop")
    assert network_and_loss <= fingerprinted


@pytest.mark.parametrize("stage", ["sample", "evaluate"])
def test_stages_that_run_the_trained_network_depend_on_its_code(stage):
    """sample (the samples) and evaluate (the NLL) run the saved network and its diffusion process,
    with cpu_kernels on the bf16 CPU path, and trained loads and casts the EMA weights: a change to
    that code must rerun them, even when it leaves the trained weights alone."""
    network = _code("nn/unet", "nn/cpu_kernels", "core/diffusion", "core/schedules", "model/trained", "nn/acceleration")
    assert network <= _closure(SCRIPT_STAGES[stage]) == _listed_code(stage)


def test_the_closure_follows_lazy_imports_and_skips_type_checking_ones(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "import ddpmlab.nn.unet\n"
        "if TYPE_CHECKING:\n"
        "    from ddpmlab.training.loop import TrainState\n"
        "def late():\n"
        "    from ddpmlab.core import schedules\n"
    )
    found = {_relative(path) for path in code_deps.import_closure(script)}
    assert found == _code("nn/unet", "nn/cpu_kernels", "nn/unet_config", "core/schedules")


def test_the_closure_tells_modules_of_one_name_in_two_packages_apart(tmp_path):
    """evaluation/memorisation.py (the scores) and reporting/memorisation_section.py (their report section)
    share a file name: deps are full paths, so each is listed for what imports it."""
    script = tmp_path / "script.py"
    script.write_text("from ddpmlab.evaluation import memorisation\n")
    found = {_relative(path) for path in code_deps.import_closure(script)}
    assert f"{PACKAGE}evaluation/memorisation.py" in found and f"{PACKAGE}reporting/memorisation_section.py" not in found
    script.write_text("from ddpmlab.reporting.memorisation_section import memorisation_section\n")
    found = {_relative(path) for path in code_deps.import_closure(script)}
    assert {f"{PACKAGE}evaluation/memorisation.py", f"{PACKAGE}reporting/memorisation_section.py"} <= found


def test_a_package_init_counts_only_once_it_imports_something(tmp_path, monkeypatch):
    """Subpackage __init__ files import nothing, so they are no dep; one that gains an import runs
    code on every import of its package and becomes a dep of every stage that imports it."""
    package = tmp_path / "ddpmlab"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text('"""top"""\n')
    (package / "core" / "__init__.py").write_text('"""empty"""\n')
    (package / "core" / "a.py").write_text("from ddpmlab.core.b import x\n")
    (package / "core" / "b.py").write_text("x = 1\n")
    monkeypatch.setattr(code_deps, "PACKAGE_DIR", package)
    script = tmp_path / "script.py"
    script.write_text("from ddpmlab.core import a\n")
    assert {p.relative_to(package).as_posix() for p in code_deps.import_closure(script)} == {"core/a.py", "core/b.py"}
    (package / "core" / "__init__.py").write_text("from . import b\n")
    assert {p.relative_to(package).as_posix() for p in code_deps.import_closure(script)} == {"core/__init__.py", "core/a.py", "core/b.py"}


# -- what an edit reruns ---------------------------------------------------------------------


def _downstream(stages: set[str]) -> set[str]:
    """``stages`` and every stage that depends on one of their outputs, transitively (dvc.yaml's DAG)."""
    outs = {name: {next(iter(o)) if isinstance(o, dict) else o for o in [*stage.get("outs", []), *stage.get("metrics", [])]} for name, stage in STAGES.items()}
    found = set(stages)
    while True:
        more = {name for name, stage in STAGES.items() if name not in found and any(dep in outs[f] for f in found for dep in stage["deps"])}
        if not more:
            return found
        found |= more


def _rerun_by(path: str) -> set[str]:
    """The stages DVC reruns after an edit to ``path``: those that list it, and what follows them."""
    assert (ROOT / path).is_file(), path
    return _downstream({name for name, stage in STAGES.items() if path in stage["deps"]})


def _package_files(folder: str) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE / folder).glob("*.py") if p.name != "__init__.py")


ALL_STAGES = set(STAGES)
SAMPLER_CODE = [f"{PACKAGE}sampling/{m}.py" for m in ("registry", "ancestral", "solvers", "unipc", "analytic_first_step", "trajectory", "guidance", "plan")]
DATA_SOURCE_CODE = [f"{PACKAGE}data/{m}.py" for m in ("sources", "standard_datasets", "image_folder")]


@pytest.mark.parametrize("path", SAMPLER_CODE)
def test_editing_a_sampler_never_retrains(path):
    assert _rerun_by(path) == {"search", "sample", "evaluate", "report"}  # search runs the samplers on the model


@pytest.mark.parametrize("path", [f"{PACKAGE}nn/unet.py", f"{PACKAGE}nn/cpu_kernels.py", f"{PACKAGE}training/loop.py", f"{PACKAGE}core/losses.py"])
def test_editing_the_network_or_training_reruns_train_onward_never_prepare_or_classifier(path):
    assert _rerun_by(path) == ALL_STAGES - {"prepare", "classifier"}


@pytest.mark.parametrize("path", DATA_SOURCE_CODE)
def test_editing_a_data_source_reruns_prepare_onward(path):
    assert {name for name, stage in STAGES.items() if path in stage["deps"]} == {"prepare"}
    assert _rerun_by(path) == ALL_STAGES


@pytest.mark.parametrize("path", _package_files("reporting"))
def test_editing_reporting_code_reruns_the_report_only(path):
    assert _rerun_by(path) in ({"report"}, set())  # compare.py runs in `ddpmlab compare`, no stage


def test_the_report_stage_runs_the_reporting_code():
    assert _code("reporting/run_report", "reporting/document", "reporting/figures/report", "reporting/sections", "reporting/memorisation_section") <= _listed_code("report")


def test_the_sampling_stages_never_depend_on_the_training_loop():
    """Loading a trained model needs the network and checkpoint I/O, not the loop that trained it."""
    for stage in ("sample", "evaluate", "report"):
        assert f"{PACKAGE}training/loop.py" not in _listed_code(stage), stage
