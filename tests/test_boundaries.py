"""The package's shape, held by parsing every module (``ast``; nothing is imported):

- layers: a package imports only from packages in lower layers (:data:`LAYERS`, docs/architecture.md),
  never from a peer or a higher one; config's leaf modules of names are the one exception;
- no import cycles;
- one owner per outside boundary: only the tracking modules import mlflow, only
  ``model/checkpoint.py`` calls torch.save / torch.load, only ``evaluation/metrics.py`` imports
  torch-fidelity;
- the math (core, sampling, nn) imports no click, mlflow, pandas, matplotlib or pathlib; only
  ``reporting/figures/`` imports matplotlib;
- ``config.py`` imports only leaf modules of names and options, and subpackage ``__init__`` files
  import nothing, so a stage's DVC deps stay what it runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ddpmlab.pipeline import code_deps

PACKAGE_DIR = code_deps.PACKAGE_DIR
MODULES = sorted(PACKAGE_DIR.rglob("*.py"))
MATH_PACKAGES = ("core", "sampling", "nn")
FORBIDDEN_IN_MATH = ("click", "mlflow", "pandas", "matplotlib", "pathlib")
# The package order, lowest first (docs/architecture.md). Packages on one line are peers: neither imports the other.
# "" is ddpmlab/__init__.py (the version), "config" and "cli" are the modules config.py and cli.py.
LAYERS = (("",), ("core", "nn", "data", "host"), ("sampling",), ("config",), ("model",), ("training", "evaluation"), ("reporting",),
          ("pipeline",), ("generation", "team", "study"), ("cli",))  # fmt: skip
CONFIG_LEAVES = {"core.math_names", "data.source_names", "nn.hardware_names", "nn.unet_config", "evaluation.extractor_names", "evaluation.correction_names",
                  "sampling.catalog"}  # fmt: skip


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE_DIR).as_posix()


def _outside_imports(path: Path) -> set[str]:
    """Top-level names of the non-ddpmlab packages a module imports anywhere (lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"ddpmlab"}


def _importers_of(package: str) -> set[str]:
    return {_name(path) for path in MODULES if package in _outside_imports(path)}


def _torch_io_calls(path: Path) -> list[str]:
    """torch.save / torch.load calls, or save / load imported from torch."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("save", "load") and isinstance(node.value, ast.Name) and node.value.id == "torch":
            calls.append(f"torch.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and {a.name for a in node.names} & {"save", "load"}:
            calls.append("from torch import save/load")
    return calls


def test_the_package_has_subpackages_and_every_module_is_seen():
    assert len(MODULES) > 40 and {p.parent.name for p in MODULES} >= {"core", "sampling", "nn", "data", "training", "evaluation", "reporting", "pipeline"}


def _package(module: str) -> str:
    """"sampling.plan" -> "sampling"; "config" -> "config"; "" (ddpmlab itself) -> ""."""
    return module.split(".")[0]


def _every_import(path: Path) -> set[str]:
    """The ddpmlab modules ``path`` imports, those under ``if TYPE_CHECKING:`` included: a type
    annotation that points up the layers is as much a tangle for a reader as a run-time import.
    Package ``__init__`` edges are left out: importing a.b runs a's empty ``__init__`` first, no real edge."""
    return {m for m in code_deps.direct_imports(path, type_checking=True) if code_deps.module_path(m).name != "__init__.py"}


def upward_imports(modules: list[Path], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import from a package to one in the same layer or a higher one, as "a.b -> c.d"."""
    rank = {package: i for i, peers in enumerate(layers) for package in peers}
    found = []
    for path in modules:
        module = code_deps.module_name(path)
        for dep in sorted(_every_import(path)):
            a, b = _package(module), _package(dep)
            if a == b:
                continue
            if a not in rank or b not in rank:
                found.append(f"{module} -> {dep} (package not in LAYERS)")
            elif module == "config" and dep in CONFIG_LEAVES:
                continue  # config reads the leaf modules of names (standard library only): the one exception
            elif rank[b] >= rank[a]:
                found.append(f"{module} -> {dep}")
    return found


def test_every_package_is_in_a_layer():
    packages = {_package(code_deps.module_name(path)) for path in MODULES}
    assert packages == {p for peers in LAYERS for p in peers}


def test_imports_point_down_the_layers_only():
    upward = upward_imports(MODULES)
    assert not upward, "imports from a package to a peer or a higher layer (docs/architecture.md):\n" + "\n".join(upward)


def test_the_layer_check_finds_an_upward_import(tmp_path, monkeypatch):
    """The check above can fail: in a scratch package, a lazy import from the low layer to the high
    one, a peer import, and an upward import hidden under TYPE_CHECKING are each reported; the
    downward import is not."""
    package = tmp_path / "ddpmlab"
    for name in ("low", "peer", "high"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from ddpmlab.high import b\n")
    (package / "low" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ddpmlab.high.b import X\n")
    (package / "peer" / "d.py").write_text("from ddpmlab.low import a\n")
    (package / "high" / "b.py").write_text("from ddpmlab.low.a import f\nfrom ddpmlab.peer import d\n")
    monkeypatch.setattr(code_deps, "PACKAGE_DIR", package)
    modules = sorted(package.rglob("*.py"))
    layers = (("",), ("low", "peer"), ("high",))
    assert upward_imports(modules, layers) == ["low.a -> high.b", "low.c -> high.b", "peer.d -> low.a"]


def test_only_the_figures_import_matplotlib():
    """Figures live in reporting/figures/ only, so a stage that draws none never depends on matplotlib code."""
    assert {m for m in _importers_of("matplotlib") if not m.startswith("reporting/figures/")} == set()


def _import_graph(modules: list[Path]) -> dict[str, set[str]]:
    """module -> the modules it imports (dotted names), without package ``__init__`` edges:
    importing a.b runs the package a's empty ``__init__`` first, which is no real edge."""
    graph = {code_deps.module_name(path): code_deps.direct_imports(path) for path in modules}
    return {module: {d for d in deps if d and d != module and code_deps.module_path(d).name != "__init__.py"} for module, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk meets, as "a -> b -> a"."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles():
    cycles = _cycles(_import_graph(MODULES))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a two-module cycle in a scratch package (one side a lazy import) is reported."""
    package = tmp_path / "ddpmlab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from ddpmlab import b\n")
    (package / "b.py").write_text("def f():\n    from ddpmlab.a import x\n")
    (package / "c.py").write_text("from ddpmlab import a\n")
    monkeypatch.setattr(code_deps, "PACKAGE_DIR", package)
    assert _cycles(_import_graph(sorted(package.glob("*.py")))) == ["a -> b -> a"]


def test_only_the_tracking_modules_import_mlflow():
    """tracking.py decides what is logged where; outbox.py sends the journal; model_registry.py logs
    and finds models; generation/mlflow_model.py is the pyfunc MLflow loads; team/stack.py, which
    runs the MLflow server, asks MLflow for its database schema's head revision before starting it.
    Nothing else, so the library's training and sampling import without mlflow (the GPU machines lack it)."""
    tracking_modules = {"pipeline/tracking.py", "pipeline/outbox.py", "pipeline/model_registry.py", "generation/mlflow_model.py", "team/stack.py"}
    assert _importers_of("mlflow") == tracking_modules


def test_only_the_metrics_module_imports_torch_fidelity():
    assert _importers_of("torch_fidelity") == {"evaluation/metrics.py"}


def test_only_checkpoint_io_calls_torch_save_and_load():
    callers = {_name(path): calls for path in MODULES if (calls := _torch_io_calls(path))}
    assert set(callers) == {"model/checkpoint.py"}, callers


def test_the_torch_io_check_sees_both_spellings(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import torch\nfrom torch import load\ntorch.save({}, 'x')\n")
    assert sorted(_torch_io_calls(module)) == ["from torch import save/load", "torch.save"]


@pytest.mark.parametrize("path", [p for p in MODULES if p.relative_to(PACKAGE_DIR).parts[0] in MATH_PACKAGES], ids=_name)
def test_math_modules_import_no_io_or_ui_libraries(path):
    assert not _outside_imports(path) & set(FORBIDDEN_IN_MATH), f"{_name(path)} imports {sorted(_outside_imports(path) & set(FORBIDDEN_IN_MATH))}"


def test_config_imports_only_leaf_modules_of_names_and_options():
    imported = code_deps.direct_imports(PACKAGE_DIR / "config.py") - {""}
    packages = {module for module in imported if code_deps.module_path(module).name == "__init__.py"}
    assert imported - packages == CONFIG_LEAVES
    for leaf in CONFIG_LEAVES:  # a leaf reads at most other leaves, and nothing heavier than the standard library
        deps = {d for d in code_deps.direct_imports(code_deps.module_path(leaf)) if code_deps.module_path(d).name != "__init__.py"}
        assert deps <= CONFIG_LEAVES, (leaf, deps)
        assert not _outside_imports(code_deps.module_path(leaf)) - {"__future__", "collections", "dataclasses", "typing"}, leaf


def test_config_closure_is_config_and_its_leaves():
    """What every stage depends on through config: a sampler, network or data edit is not among them."""
    closure = {code_deps.module_name(p) for p in code_deps.import_closure(PACKAGE_DIR / "config.py")}
    assert closure == CONFIG_LEAVES


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*/__init__.py")), ids=_name)
def test_subpackage_inits_import_nothing(path):
    assert not any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(ast.parse(path.read_text())))
