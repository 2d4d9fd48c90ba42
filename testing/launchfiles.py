"""Launch files for tests and benches, built from typed Structs instead of written as dicts.

`node()` makes a launch file's `NodeSpec` from a node's typed configuration (its kind is the one
that declares that configuration type); `launch_file()` gathers nodes into a `LaunchFile`; and
`write()` saves it as YAML for `vigil.launch.load`. Both validate what they build as the loader
would, so a misspelt field fails where the test builds it, not inside a launched process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import yaml

from vigil.launch.model import LaunchFile, NodeSpec
from vigil.nodes.kinds import node_kinds
from vigil.schemas import Config

__all__ = ["launch_file", "node", "replace_node", "write"]


def _kind_of(config: Config) -> str:
    kinds = [k.name for k in node_kinds().values() if k.config is type(config)]
    if len(kinds) != 1:
        raise TypeError(f"{type(config).__name__} is the configuration of no node kind")
    return kinds[0]


def node(name: str, config: Config, **spec: Any) -> NodeSpec:
    """The node `name` of the kind that `config` configures; `spec` sets other `NodeSpec`
    fields (`replicas`, `required`, `restart`, `host`, ...)."""
    raw = {"name": name, "kind": _kind_of(config), "config": msgspec.to_builtins(config), **spec}
    return msgspec.convert(msgspec.to_builtins(raw), type=NodeSpec)


def launch_file(
    name: str, *nodes: NodeSpec, heartbeat_ms: int = 100, allow_root: bool = True, **fields: Any
) -> LaunchFile:
    """A launch file of `nodes`; `fields` sets other `LaunchFile` fields (`hosts`, `bus`, ...).

    Heartbeats are fast (so supervision tests end soon) and nodes may run as root, since tests
    and benches run as whoever runs them, root in CI. A node gets two minutes to become
    ready: on a busy shared machine a cold start (the loader's first `import onnx`) can take
    far longer than on an idle one.
    """
    raw = {
        "name": name,
        "heartbeat_ms": heartbeat_ms,
        "allow_root": allow_root,
        "ready_timeout_s": 120.0,
        "nodes": list(nodes),
        **fields,
    }
    return msgspec.convert(msgspec.to_builtins(raw), type=LaunchFile)


def replace_node(launch: LaunchFile, name: str, spec: NodeSpec | None) -> LaunchFile:
    """`launch` with its node `name` replaced by `spec` (added at the end when it has none,
    removed when `spec` is None)."""
    nodes = [n for n in launch.nodes if n.name != name]
    if spec is not None:
        at = next((i for i, n in enumerate(launch.nodes) if n.name == name), len(nodes))
        nodes.insert(at, spec)
    return msgspec.structs.replace(launch, nodes=nodes)


def write(launch: LaunchFile, folder: Path, file_name: str = "") -> Path:
    """Save `launch` as `folder/<file_name or launch name>.yaml`; returns the path."""
    path = folder / (file_name or f"{launch.name}.yaml")
    path.write_text(yaml.safe_dump(msgspec.to_builtins(launch), sort_keys=False))
    return path
