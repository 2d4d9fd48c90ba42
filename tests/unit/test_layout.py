"""The package's layout holds: floors, no import circle, public names, one exception root.

The floors, lowest first: schemas, errors, bus, client, models, nodes, launch, tools (bench
sits above them all, outside the package). A module imports only from its own floor or lower
ones; `testing` may import any floor but `tools`, and no other module imports `testing`.
Imports are read from the source (every `import`, also inside functions and `TYPE_CHECKING`
blocks), so the rules hold for mypy and for readers, not only at run time.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from vigil.errors import VigilError

ROOT = Path(__file__).resolve().parents[2]
# Folders of the repository that are not the package.
OUTSIDE: Final = frozenset({"tests", "bench", "docs", "build", "run"})
FLOORS: Final = ("schemas", "errors", "bus", "client", "models", "nodes", "launch", "tools")
TESTING: Final = "testing"
# Exception classes that deliberately do not subclass VigilError, as "module.Class": reason.
# An entry needs a reason a reviewer accepts; a new one is added here, never silently.
NOT_VIGIL_ERRORS: Final = {
    "vigil.nodes.ingest._validate.Rejection": "a broken rule carried from a check to the"
    " ingest's typed reply; raised and caught inside the ingest alone",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in OUTSIDE or any(p.startswith(".") or p.endswith(".egg-info") for p in parts):
            continue
        names = [*parts[:-1], path.stem]
        if names[-1] == "__init__":
            names.pop()
        found[".".join(["vigil", *names])] = path
    return found


MODULES: Final = _modules()


def _imports(module: str) -> Iterator[str]:
    """The `vigil` modules one module imports (a name imported from a package counts as the
    package, unless it is a module of its own)."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "vigil")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "vigil":
                continue
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield name if name in MODULES else node.module


GRAPH: Final = {m: sorted(set(_imports(m))) for m in MODULES}


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycle() -> list[str]:
    """One import circle, as the modules along it; empty when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for target in GRAPH.get(module, []):
            if found := visit(target):
                return found
        path.pop()
        done.add(module)
        return []

    for module in GRAPH:
        if found := visit(module):
            return found
    return []


def test_the_layout_is_read_from_every_floor() -> None:
    """The walk finds the package's modules on every floor (so the rules below see them)."""
    assert {_floor(m) for m in MODULES} >= {*FLOORS, TESTING}
    assert all(_floor(m) in {*FLOORS, TESTING, ""} for m in MODULES)


def test_no_import_circle() -> None:
    """No module imports itself back through others."""
    assert _cycle() == []


def test_no_import_goes_up_a_floor() -> None:
    """Each module imports from its own floor or lower ones only."""
    up = [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _floor(m) in FLOORS
        for t in targets
        if _floor(t) in FLOORS and FLOORS.index(_floor(t)) > FLOORS.index(_floor(m))
    ]
    assert up == []


def test_only_tools_and_bench_import_tools() -> None:
    """No module outside `tools/` imports from it (bench, outside the package, may)."""
    assert [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _floor(m) != "tools"
        for t in targets
        if _floor(t) == "tools"
    ] == []


def test_no_runtime_module_imports_testing() -> None:
    """Test fixtures stay out of what ships to a target: only `testing` imports `testing`."""
    assert [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _floor(m) != TESTING
        for t in targets
        if _floor(t) == TESTING
    ] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_public_name_resolves(module: str) -> None:
    """Every name a module lists in `__all__` exists in it."""
    loaded = importlib.import_module(module)
    missing = [name for name in getattr(loaded, "__all__", []) if not hasattr(loaded, name)]
    assert missing == []


def test_every_package_declares_its_public_names() -> None:
    """Each package's `__init__` has an `__all__`."""
    packages = [m for m, path in MODULES.items() if path.name == "__init__.py"]
    assert [m for m in packages if not hasattr(importlib.import_module(m), "__all__")] == []


def test_every_exception_is_a_vigil_error() -> None:
    """Every exception class the package defines has VigilError as its root, so a caller
    can catch vigil's errors as one (a deliberate exception is listed in NOT_VIGIL_ERRORS)."""
    strays = []
    for module in MODULES:
        for name, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if cls.__module__ != module or not issubclass(cls, BaseException):
                continue
            if not issubclass(cls, VigilError) and f"{module}.{name}" not in NOT_VIGIL_ERRORS:
                strays.append(f"{module}.{name}")
    assert strays == []
