"""The dependency direction between the four packages (DESIGN.md, "Layout"), and no import
cycle between modules.

``graphs -> guards``, ``checkpoints -> guards``, ``cli -> all``; ``guards`` imports none
of them. Read from the source (every import, at module level or inside a function), so a
lazy import that would make a cycle at run time is caught too.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "guards": {"guards"},
    "graphs": {"graphs", "guards"},
    "checkpoints": {"checkpoints", "guards"},
    "cli": {"cli", "checkpoints", "graphs", "guards"},
}
"""Package folder -> the sanegraph packages its modules may import."""


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("sanegraph", *parts))


def _imports(source: str, package: str) -> set[str]:
    """The sanegraph packages (``guards``, ``cli``, ...) that ``source`` imports, when it is
    a module of ``package`` (which relative imports start from)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            targets = [importlib.util.resolve_name(relative, package)]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] == "sanegraph" and len(parts) > 1:
                found.add(parts[1])
    return found


def _file_imports(path: Path) -> set[str]:
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports(path.read_text(encoding="utf-8"), package)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_layout_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    wrong = {str(path.relative_to(ROOT)): _file_imports(path) - ALLOWED[package] for path in files}
    wrong = {path: sorted(imported) for path, imported in wrong.items() if imported}
    assert wrong == {}, (
        f"{package}/ may import sanegraph.{{{', '.join(sorted(ALLOWED[package]))}}} only; "
        "move the code that needs more into a package allowed to import it (cli imports all)."
    )


def test_the_check_sees_relative_and_lazy_imports() -> None:
    """An import inside a function counts, and so does a relative one that climbs out of
    its package."""
    source = "def f():\n    from ..cli import main\n    import sanegraph.graphs.parallel\n"
    assert _imports(source, "sanegraph.checkpoints") == {"cli", "graphs"}
    assert _imports("from .rollback import rollback\n", "sanegraph.checkpoints") == {"checkpoints"}


# -- import cycles between modules --------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` (never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _run_time_nodes(other)
            continue
        yield child
        yield from _run_time_nodes(child)


def _known(name: str, modules: Collection[str]) -> str | None:
    """``name``, or the closest enclosing module of it, among ``modules``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _module_imports(source: str, module: str, *, modules: Collection[str]) -> set[str]:
    """The modules among ``modules`` that ``source`` (the module ``module``) imports when it
    runs: at module level or in a function, relative imports resolved. ``from pkg import
    name`` imports the submodule ``pkg.name`` when there is one, otherwise ``pkg``."""
    package = module if f"{module}.__init__" in modules else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _run_time_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            known = _known(target, modules)
            if known and known != module:
                found.add(known)
    return found


def _import_graph() -> dict[str, set[str]]:
    """sanegraph module -> the sanegraph modules it imports (``sanegraph.guards`` is the
    package's ``__init__``)."""
    files = {_module(path): path for pkg in ALLOWED for path in (ROOT / pkg).rglob("*.py")}
    modules = set(files) | {f"{name}.__init__" for name, p in files.items() if p.stem == "__init__"}
    return {
        name: _module_imports(path.read_text(encoding="utf-8"), name, modules=modules)
        for name, path in files.items()
    }


def _find_cycle(graph: Mapping[str, Collection[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(graph.get(root, ())))]
        state[root] = "open"
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = "open"
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle_between_modules() -> None:
    """A cycle works only while the import order happens to suit it; a lazy import inside a
    function hides one until the function runs first from the other side. A package's
    ``__init__`` importing its own submodules is not a cycle (``pkg -> pkg.sub``); a
    submodule importing a name its package's ``__init__`` re-exports is."""
    graph = _import_graph()
    assert "sanegraph.guards._compat" in graph["sanegraph.guards._scope"]
    cycle = _find_cycle(graph)
    assert cycle is None, (
        f"import cycle: {' -> '.join(cycle or [])}. Import the defining submodule rather "
        "than the package that re-exports it, or move the shared code into a module both "
        "can import."
    )


def test_the_cycle_check_sees_lazy_and_relative_imports_not_type_checking_ones() -> None:
    modules = {
        "sanegraph.p",
        "sanegraph.p.__init__",
        "sanegraph.p.a",
        "sanegraph.p.b",
        "sanegraph.q",
    }
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b, helper\n"
        "if TYPE_CHECKING:\n"
        "    from sanegraph.q import Q\n"
        "else:\n"
        "    import json\n"
        "def f():\n"
        "    from ..q import thing\n"
    )
    assert _module_imports(source, "sanegraph.p.a", modules=modules) == {
        "sanegraph.p.b",  # a submodule, by `from . import b`
        "sanegraph.p",  # `helper` is a name in sanegraph/p/__init__
        "sanegraph.q",  # lazy, relative
    }
    init = "from .a import x\nfrom . import b\n"
    assert _module_imports(init, "sanegraph.p", modules=modules) == {
        "sanegraph.p.a",
        "sanegraph.p.b",
    }
    assert _find_cycle({"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set()}) is None
    assert _find_cycle({"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}}) == ["p", "p.a", "p.b", "p"]
    assert _find_cycle({"x": {"x"}}) == ["x", "x"]
