"""The public API: tuple ``__all__`` everywhere, every exported name documented, and a
wheel that ships the four packages, their ``py.typed`` markers and the console script.

Docstring rule: a class or function must carry its own docstring (``__doc__`` set on the
object itself; a class does not inherit one from its bases). A constant or type alias
(``BRANCH_KEY``, ``Decision = Annotated[...]``) cannot carry one, so it must be followed,
in the module that assigns it, by a string literal: the attribute docstring that Sphinx,
mkdocstrings and IDEs show.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guards", "graphs", "checkpoints", "cli")
"""Folders that are the import packages ``sanegraph.<folder>``."""
API_MODULES = (
    "sanegraph.guards",
    "sanegraph.graphs",
    "sanegraph.checkpoints",
    "sanegraph.cli",
    "sanegraph.guards.testing",
)
MODULE_FILES = sorted(
    path
    for pkg in PACKAGES
    for path in (ROOT / pkg).rglob("*.py")
    if not path.name.startswith("_") and not any(p.startswith("_") for p in path.parent.parts)
)
"""Public module files, subpackages included (``__init__.py`` and ``_private.py`` excluded)."""


def _module_name(path: Path) -> str:
    return ".".join(("sanegraph", *path.relative_to(ROOT).with_suffix("").parts))


# -- docstrings -------------------------------------------------------------------------


def _tree(module: str) -> tuple[ast.Module, str]:
    """The AST of ``module`` (read from its file, not imported) and its package name."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8")), spec.parent or ""


def _assigned(node: ast.stmt, name: str) -> bool:
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    type_alias = getattr(ast, "TypeAlias", None)  # `type X = ...`, Python 3.12+
    return type_alias is not None and isinstance(node, type_alias) and node.name.id == name


def _attribute_docstring(module: str, name: str, depth: int = 0) -> str | None:
    """The string literal after ``name``'s assignment, following ``from .x import name``."""
    assert depth < 10, f"import cycle while looking for {module}.{name}"
    tree, package = _tree(module)
    body = tree.body
    for i, node in enumerate(body):
        if _assigned(node, name):
            after = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                return after.value.value
            return None
    for node in body:
        if isinstance(node, ast.ImportFrom) and any(
            alias.name == name and alias.asname in (None, name) for alias in node.names
        ):
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            return _attribute_docstring(source, name, depth + 1)
    return None


def _docstring(module: ModuleType, name: str, obj: Any) -> str | None:
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__")
    if inspect.isroutine(obj):
        return inspect.getdoc(obj)
    return _attribute_docstring(module.__name__, name)


def _undocumented(module: ModuleType) -> list[str]:
    missing = []
    for name in module.__all__:
        doc = _docstring(module, name, getattr(module, name))
        if not (doc or "").strip():
            missing.append(name)
    return missing


@pytest.mark.parametrize("name", API_MODULES)
def test_all_is_a_tuple_of_importable_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert isinstance(exported, tuple), f"{name}.__all__ is a {type(exported).__name__}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define"


@pytest.mark.parametrize("name", API_MODULES)
def test_every_exported_name_has_a_docstring(name: str) -> None:
    assert _undocumented(importlib.import_module(name)) == []


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_public_module_defines_a_tuple_all(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assigned = [node for node in tree.body if _assigned(node, "__all__")]
    assert len(assigned) == 1, f"{path.name} must assign __all__ once at module level"
    value = assigned[0].value
    assert isinstance(value, ast.Tuple), f"{path.name}: __all__ must be a tuple literal"
    module = importlib.import_module(_module_name(path))
    assert isinstance(module.__all__, tuple)
    assert _undocumented(module) == []


def test_docstring_rule_catches_an_undocumented_constant() -> None:
    """The alias/constant branch of the rule reads the defining module, through re-exports."""
    assert _attribute_docstring("sanegraph.guards.ledger", "BRANCH_KEY")
    assert _attribute_docstring("sanegraph.guards._step", "_ENVELOPE_KEYS") is None


# -- the wheel --------------------------------------------------------------------------

_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".mypy_src",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
    "build",
    "dist",
    "*.egg-info",
    "*.db",
    "*.db-*",
    "*.sqlite",
    "*.sqlite-*",
)


def _build_hint() -> str:
    """Why a --no-build-isolation build fails here, when the cause is the setuptools."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r"^requires\s*=\s*\[([^\]]*)\]", text, re.MULTILINE)
    requires = re.findall(r"[\"']([^\"']+)[\"']", found[1]) if found else []
    needed = next((Requirement(r) for r in requires if r.startswith("setuptools")), None)
    if needed is None:
        return ""
    try:
        have = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        have = "not installed"
    if have != "not installed" and needed.specifier.contains(have):
        return ""
    return (
        f"\nThe test environment's setuptools is {have}, and pyproject.toml's [build-system] "
        f"requires {needed}: with --no-build-isolation the environment must provide it "
        f"({sys.executable} -m pip install '{needed}')."
    )


def test_wheel_ships_the_packages_and_the_console_script(tmp_path: Path) -> None:
    # Built from a copy of the repository: an in-tree build would write build/ and
    # *.egg-info into the working tree, and a stale build/lib would leak into later wheels.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES, symlinks=True)
    out = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*pip, "--no-index", "--disable-pip-version-check", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"pip wheel failed:\n{log}{_build_hint()}"
    (wheel,) = out.glob("sanegraph-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    for pkg in PACKAGES:
        assert f"sanegraph/{pkg}/__init__.py" in names
        assert f"sanegraph/{pkg}/py.typed" in names
    stray = sorted(n for n in names if not n.startswith(("sanegraph/", "sanegraph-")))
    assert stray == [], "the wheel ships files outside the sanegraph packages"
    assert scripts["console_scripts"]["sanegraph"] == "sanegraph.cli:main"


# -- at most two positional parameters, then * -------------------------------------------

PUBLIC_MODULE_FILES = sorted(
    path
    for pkg in PACKAGES
    for path in (ROOT / pkg).rglob("*.py")
    if not path.name.startswith("_") or path.name == "__init__.py"
)
"""Every public module, subpackages included: module files not starting with ``_``, and
packages' ``__init__.py``."""

MAX_POSITIONAL = 2

KNOWN_OFFENDERS: tuple[str, ...] = ()
"""Public callables that take more than two positional parameters today."""

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _dotted(path: Path) -> str:
    """The module name of a file under one of the four packages, subpackages included."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("sanegraph", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _ours(obj: Any) -> bool:
    return str(getattr(obj, "__module__", "")).startswith("sanegraph.")


def _exported(module: ModuleType) -> list[Any]:
    """The objects a module exports: its ``__all__``, or, in a module without one, the
    public names it defines."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        ]
    return [getattr(module, name) for name in names]


def _fixed_elsewhere(cls: type, name: str, func: Any) -> bool:
    """Whether a method's signature is set by code we do not own: a base class outside
    sanegraph defines it (LangChain's callback ``on_*``, LangGraph's ``stream``/``compile``,
    pydantic's hooks, ``Mapping`` dunders), pydantic builds the ``__init__``, or another
    library generated the function (``typing.Protocol``'s ``__init__``)."""
    if not _ours(func):
        return True
    if name == "__init__":
        if issubclass(cls, BaseModel):
            return True
        params = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
        return bool(params) and all(field.kw_only is True for field in params)
    return any(name in vars(base) for base in cls.__mro__ if not _ours(base) and base is not object)


def _callables(obj: Any) -> Iterator[tuple[str, Any, bool]]:
    """``(qualified name, function, whether its first parameter is self/cls)`` for a public
    function, or for a class's ``__init__``, ``__call__`` and public methods (its own and
    those of its sanegraph bases)."""
    if inspect.isfunction(obj):
        yield f"{obj.__module__}.{obj.__qualname__}", obj, False
        return
    if not inspect.isclass(obj):
        return
    done: set[str] = set()
    for klass in obj.__mro__:
        if not _ours(klass):
            continue
        for name, raw in vars(klass).items():
            if name in done or (name.startswith("_") and name not in ("__init__", "__call__")):
                continue
            done.add(name)
            if isinstance(raw, staticmethod):
                func, bound = raw.__func__, False
            elif isinstance(raw, classmethod):
                func, bound = raw.__func__, True
            elif inspect.isfunction(raw):
                func, bound = raw, True
            else:
                continue  # properties, attributes, nested classes
            if not _fixed_elsewhere(obj, name, func):
                yield f"{klass.__module__}.{klass.__qualname__}.{name}", func, bound


def _positional_parameters() -> dict[str, list[str]]:
    """Every public callable -> its positional parameters (``self``/``cls`` left out)."""
    found: dict[str, list[str]] = {}
    for path in PUBLIC_MODULE_FILES:
        module = importlib.import_module(_dotted(path))
        for obj in _exported(module):
            if not _ours(obj):
                continue
            for name, func, bound in _callables(obj):
                params = list(inspect.signature(func).parameters.values())[int(bound) :]
                found[name] = [p.name for p in params if p.kind in _POSITIONAL]
    return found


def test_public_callables_take_at_most_two_positional_parameters() -> None:
    found = _positional_parameters()
    assert "sanegraph.checkpoints.rollback.rollback" in found
    assert "sanegraph.guards.graph.DurableCompiledGraph.stream" not in found  # LangGraph's
    over = {name: params for name, params in found.items() if len(params) > MAX_POSITIONAL}
    new = {name: params for name, params in over.items() if name not in KNOWN_OFFENDERS}
    assert new == {}, (
        f"These public callables take more than {MAX_POSITIONAL} positional parameters: "
        f"{new}. Put `*` after the second (CONVENTIONS.md: at most two positional "
        "parameters, then *); a dataclass takes kw_only=True."
    )
    fixed = sorted(set(KNOWN_OFFENDERS) - set(over))
    assert fixed == [], f"{fixed} now follow the rule: remove them from KNOWN_OFFENDERS"


def test_the_positional_rule_skips_signatures_set_by_other_libraries() -> None:
    from sanegraph.guards.budget.meter import BudgetMeter
    from sanegraph.guards.graph import GuardedStateGraph
    from sanegraph.guards.testing.models import ScriptedChatModel

    names = [name for name, _, _ in _callables(BudgetMeter)]
    assert "sanegraph.guards.budget.meter.BudgetMeter.__init__" in names
    assert not [name for name in names if name.rpartition(".")[2].startswith("on_")]
    assert [name for name, _, _ in _callables(GuardedStateGraph)] == []
    assert not [
        name
        for name, _, _ in _callables(ScriptedChatModel)
        if name.endswith((".__init__", ".bind_tools", ".model_post_init"))
    ]
