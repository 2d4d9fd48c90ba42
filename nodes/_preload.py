"""Compiled libraries a node kind needs loaded into its process first (LD_PRELOAD).

Only a library the dynamic linker loads before any other can interpose a function that a
later one (libzmq) calls from libc: loading it from Python once the node runs is too late.
So the launcher puts a kind's libraries in the node's environment, and a node started any
other way (`python -m vigil.nodes` by hand) re-executes itself once with them (`preload`).
A library not built (a source tree run unbuilt) is left out, and the node says so itself.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["environ", "loaded", "preload", "shared_object"]

_VARIABLE = "LD_PRELOAD"
# Set on the re-execution: a library the dynamic linker still ignores is not tried again.
_TRIED = "VIGIL_PRELOAD_TRIED"


def shared_object(module: str) -> Path | None:
    """The file of the compiled module `module`, found without importing it (its package's
    parent is imported); None when it was not built."""
    parent = importlib.util.find_spec(module.rpartition(".")[0])
    if parent is None or parent.submodule_search_locations is None:
        return None
    spec = importlib.machinery.PathFinder.find_spec(module, parent.submodule_search_locations)
    if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        return None
    return Path(spec.loader.path).resolve()


def loaded(path: Path) -> bool:
    """Whether the shared object at `path` is mapped into this process."""
    with open("/proc/self/maps") as maps:
        return str(path) in maps.read()


def environ(modules: Iterable[str], base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the built ones of `modules` first in LD_PRELOAD."""
    env = dict(base)
    paths = [str(path) for m in modules if (path := shared_object(m)) is not None]
    if paths:
        env[_VARIABLE] = " ".join([*paths, *filter(None, [base.get(_VARIABLE)])])
    return env


def preload(modules: Iterable[str]) -> None:
    """Re-execute this process with the built ones of `modules` preloaded, unless they are
    already loaded or were tried once (the dynamic linker refused them: it said why)."""
    missing = [m for m in modules if (p := shared_object(m)) is not None and not loaded(p)]
    if not missing or os.environ.get(_TRIED):
        return
    env = environ(missing, os.environ) | {_TRIED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
