"""Every node kind, found among the packages of `vigil.nodes` (each one declares its `KIND`).

Finding a kind imports only its package's declaration, never its implementation: listing the
kinds or checking a launch file loads no inference engine.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vigil.nodes.contract import NodeKind

__all__ = ["kind_names", "node_kind", "node_kinds"]


@functools.cache
def kind_names() -> tuple[str, ...]:
    """The names of every node kind: the public sub-packages of `vigil.nodes`."""
    found = pkgutil.iter_modules([str(Path(__file__).parent)])
    return tuple(sorted(m.name for m in found if m.ispkg and not m.name.startswith("_")))


def node_kind(name: str) -> NodeKind[Any]:
    """The declaration of one node kind; KeyError names the kind when there is none."""
    if name not in kind_names():
        raise KeyError(name)
    kind = importlib.import_module(f"vigil.nodes.{name}").KIND
    if not isinstance(kind, NodeKind) or kind.name != name:
        raise TypeError(f"vigil.nodes.{name}.KIND does not declare the node kind {name!r}")
    return kind


@functools.cache
def node_kinds() -> Mapping[str, NodeKind[Any]]:
    """Every node kind by name."""
    return {name: node_kind(name) for name in kind_names()}
