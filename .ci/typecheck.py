"""Run mypy over the package `vigil`, naming each file by its module.

The repository root is the package (pyproject maps `vigil` to `.`), and mypy finds a package
only by a folder of its name; the editable install's import hook is invisible to it. So the
sources are given to mypy here with their `vigil.*` names, from the same pyproject settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mypy import build
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent
# Folders of the repository that are not the package.
OUTSIDE = {"tests", "bench", "docs", "build", "run"}


def sources() -> list[BuildSource]:
    """Every module of the package, with its path relative to the root."""
    found = []
    for path in sorted([*ROOT.rglob("*.py"), *ROOT.rglob("*.pyi")]):
        parts = path.relative_to(ROOT).parts
        if parts[0] in OUTSIDE or any(p.startswith(".") or "egg-info" in p for p in parts):
            continue
        names = [*parts[:-1], path.stem]
        if names[-1] == "__init__":
            names.pop()
        module = ".".join(["vigil", *names])
        found.append(BuildSource(str(path.relative_to(ROOT)), module, base_dir=str(ROOT)))
    return found


def main() -> int:
    """Check the package with pyproject's settings; 1 when mypy finds an error."""
    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml"), "-c", "pass"])
    modules = sources()
    try:
        result = build.build(modules, options)
    except build.CompileError as exc:
        print("\n".join(exc.messages))
        return 2
    for line in result.errors:
        print(line)
    errors = [e for e in result.errors if ": error:" in e]
    if errors:
        files = len({e.split(":", 1)[0] for e in errors})
        print(
            f"Found {len(errors)} error{'s' * (len(errors) != 1)} in {files} "
            f"file{'s' * (files != 1)} (checked {len(modules)} source files)"
        )
        return 1
    print(f"Success: no issues found in {len(modules)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
