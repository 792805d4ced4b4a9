"""The dependency direction between the four packages (DESIGN.md, "Layout").

``graphs -> guards``, ``checkpoints -> guards``, ``cli -> all``; ``guards`` imports none
of them. Read from the source (every import, at module level or inside a function), so a
lazy import that would make a cycle at run time is caught too.
"""

from __future__ import annotations

import ast
import importlib.util
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
