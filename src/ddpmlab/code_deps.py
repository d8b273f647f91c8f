"""Which ddpmlab source files a script runs: the static import closure, found with ``ast``.

One answer for two questions: the ``src/ddpmlab/*.py`` deps dvc.yaml must list for each stage
(``tests/test_dvc_deps.py``) and the training code ``stages/train.py``'s resume fingerprint
covers. Imports inside functions count (a lazily imported module still runs), those under
``if TYPE_CHECKING:`` do not; the package's ``__init__.py`` counts only when it imports
something itself. Pure standard library, no imports
of the modules read.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ddpmlab"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_path(module: str) -> Path:
    """``"unet"`` -> .../ddpmlab/unet.py; ``"__init__"`` -> the package's ``__init__.py``."""
    return PACKAGE_DIR / f"{module}.py"


def direct_imports(source: Path) -> set[str]:
    """The ddpmlab modules a source file imports anywhere in it (``"__init__"`` for the package itself)."""
    in_package = source.resolve().parent == PACKAGE_DIR
    found: set[str] = set()
    for node in _walk_run_time(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _resolve(alias.name.split("."), ())
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names)
            if node.level == 0 and node.module:
                found |= _resolve(node.module.split("."), names)
            elif node.level == 1 and in_package:  # from . import x / from .x import y
                found |= _resolve([PACKAGE, *(node.module.split(".") if node.module else [])], names)
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
    if dotted[0] != PACKAGE:
        return set()
    if len(dotted) > 1:  # import ddpmlab.x / from ddpmlab.x import y: the package, then x
        return {"__init__", dotted[1]}
    # import ddpmlab / from ddpmlab import x, y: each name a submodule, or else a name of __init__
    return {"__init__"} | {name for name in names if module_path(name).is_file()}


def import_closure(*sources: Path) -> list[Path]:
    """Every ddpmlab module file the sources import, directly or not, sorted by name.

    ``__init__.py`` is included only when it has an import of its own; until then it runs
    nothing that could change a result.
    """
    closure: set[str] = set()
    todo = [module for source in sources for module in direct_imports(source)]
    while todo:
        module = todo.pop()
        if module in closure:
            continue
        closure.add(module)
        todo += direct_imports(module_path(module))
    if "__init__" in closure and not _has_imports(module_path("__init__")):
        closure.discard("__init__")
    return sorted(module_path(module) for module in closure)


def _has_imports(source: Path) -> bool:
    return any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in _walk_run_time(ast.parse(source.read_text())))


def main(argv: list[str] | None = None) -> None:
    """``python -m ddpmlab.code_deps stages/train.py``: the deps lines dvc.yaml lists for that script."""
    import sys

    for script in argv if argv is not None else sys.argv[1:]:
        print(f"      - {script}")
        root = PACKAGE_DIR.parents[1]
        for path in import_closure(Path(script)):
            print(f"      - {path.relative_to(root).as_posix() if path.is_relative_to(root) else path}")


if __name__ == "__main__":
    main()
