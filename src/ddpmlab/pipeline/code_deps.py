"""Which ddpmlab source files a script runs: the static import closure, found with ``ast``.

One answer for two questions: the ``src/ddpmlab/**.py`` deps dvc.yaml must list for each stage
(``tests/test_dvc_deps.py``) and the training code ``stages/train.py``'s resume fingerprint
covers. Imports inside functions count (a lazily imported module still runs), those under
``if TYPE_CHECKING:`` do not; a package's ``__init__.py`` counts only when it imports
something itself. Modules are dotted names inside ddpmlab (``"core.diffusion"``). Pure standard
library: the modules read are parsed, never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ddpmlab"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/ddpmlab


def module_path(module: str) -> Path:
    """Dotted name inside ddpmlab -> file: ``"core.diffusion"`` -> .../ddpmlab/core/diffusion.py;
    a package (``"core"``, or ``""`` for ddpmlab itself) -> its ``__init__.py``."""
    base = PACKAGE_DIR.joinpath(*module.split(".")) if module else PACKAGE_DIR
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def module_name(path: Path) -> str:
    """The inverse of :func:`module_path`."""
    parts = list(path.resolve().relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    return module_path(module).is_file()


def direct_imports(source: Path, *, type_checking: bool = False) -> set[str]:
    """The ddpmlab modules a source file imports anywhere in it, as dotted names; importing
    ``ddpmlab.a.b`` also runs the packages on the way (``""`` for ddpmlab, ``"a"``). Imports under
    ``if TYPE_CHECKING:`` never run and are left out, unless ``type_checking`` (the layer test's reading)."""
    source = source.resolve()
    inside = source.is_relative_to(PACKAGE_DIR)
    package = [PACKAGE, *module_name(source).split(".")] if inside else []
    if inside and source.name != "__init__.py":
        package = package[:-1]  # a module's own package; __init__.py is its package
    package = [part for part in package if part]
    found: set[str] = set()
    tree = ast.parse(source.read_text(), filename=str(source))
    for node in ast.walk(tree) if type_checking else _walk_run_time(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _resolve(alias.name.split("."), ())
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names)
            if node.level == 0 and node.module:
                found |= _resolve(node.module.split("."), names)
            elif node.level > 0 and inside:  # from . import x / from ..core import y
                base = package[: len(package) - (node.level - 1)]
                found |= _resolve([*base, *(node.module.split(".") if node.module else [])], names)
    return found


def _walk_run_time(tree: ast.AST):
    """ast.walk, less the bodies of ``if TYPE_CHECKING:`` (imports for type checkers only never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(dotted: list[str], names: tuple[str, ...]) -> set[str]:
    """``ddpmlab.a.b`` (+ names imported from it) -> {"", "a", "a.b"} plus each name that is a module."""
    if not dotted or dotted[0] != PACKAGE:
        return set()
    inner = dotted[1:]
    found = {".".join(inner[:i]) for i in range(len(inner) + 1)}  # ddpmlab, then every package on the way
    found |= {".".join([*inner, name]) for name in names if _exists(".".join([*inner, name]))}
    return {module for module in found if _exists(module)}


def import_closure(*sources: Path) -> list[Path]:
    """Every ddpmlab file the sources import, directly or not, sorted by path.

    A package's ``__init__.py`` is included only when it has an import of its own; until then it
    runs nothing that could change a result.
    """
    closure: set[str] = set()
    todo = [module for source in sources for module in direct_imports(source)]
    while todo:
        module = todo.pop()
        if module in closure:
            continue
        closure.add(module)
        todo += direct_imports(module_path(module))
    paths = {module_path(module) for module in closure}
    return sorted(path for path in paths if path.name != "__init__.py" or _has_imports(path))


def _has_imports(source: Path) -> bool:
    return any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in _walk_run_time(ast.parse(source.read_text())))


def _deps_lines(script: str) -> list[str]:
    root = PACKAGE_DIR.parents[1]  # the checkout: src/ddpmlab -> .
    return [f"      - {path.relative_to(root).as_posix() if path.is_relative_to(root) else path}" for path in import_closure(Path(script))]


def update_dvc_yaml(text: str) -> str:
    """``text`` (a dvc.yaml) with each stage's ``src/ddpmlab/`` deps replaced by its script's import
    closure, listed right after the script; every other line (comments, data deps, params) kept as it is.
    A stage's script is the ``stages/<name>.py`` its deps list."""
    lines, out, script = text.splitlines(), [], None
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            script = None  # a new stage
        if stripped.startswith("- src/ddpmlab/") and script is not None:
            continue  # replaced below the script's line
        out.append(line)
        if stripped.startswith("- stages/") and stripped.endswith(".py"):
            script = stripped.removeprefix("- ")
            out += _deps_lines(script)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m ddpmlab.pipeline.code_deps stages/train.py``: the deps lines dvc.yaml lists for that script;
    ``python -m ddpmlab.pipeline.code_deps --update dvc.yaml``: rewrite every stage's code deps in place."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["--update"]:
        for name in args[1:]:
            path = Path(name)
            path.write_text(update_dvc_yaml(path.read_text()))
            print(f"updated the code deps of every stage in {path}")
        return
    for script in args:
        print(f"      - {script}")
        print("\n".join(_deps_lines(script)))


if __name__ == "__main__":
    main()
