"""Read a launch file's YAML tree: arguments resolved, `$(...)` substituted, includes expanded.

An entry of `nodes:` may include another launch file in its place:

    nodes:
      - include: sensors.yaml          # relative to this file
        arguments: {rate_hz: $(arg rate_hz)}

The included file's nodes take the entry's place, in their order; of that file only its
`arguments` and `nodes` count (the name, heartbeat, hosts and security are the including
file's). Each node remembers the file it was written in, so an error names that file and its
`$.path` there, and relative paths in its config resolve against that file's folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from vigil.bus.channel import validation_path
from vigil.errors import ConfigError
from vigil.launch._arguments import (
    ArgName,
    Argument,
    Given,
    Scalar,
    resolve_arguments,
    substitute,
)
from vigil.schemas import Config

__all__ = ["Expanded", "Include", "Origin", "declared_arguments", "read_launch"]

# Settings that only the top launch file may carry: an included file's would be ignored.
_TOP_ONLY = ("hosts", "bus", "security")


class Include(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `nodes:` entry that includes another launch file with arguments."""

    include: str
    arguments: dict[ArgName, Scalar] = {}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one node of the expanded file was written."""

    source: str
    path: str
    directory: Path


@dataclass(frozen=True, slots=True)
class Expanded:
    """The top file's tree ready to decode, with the origin of each of its nodes."""

    tree: dict[str, Any]
    origins: list[Origin]
    values: dict[str, Scalar]


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, "$", f"Expected `object`, got `{type(raw).__name__}`")
    return raw


def _declared(source: str, raw: Mapping[str, Any]) -> dict[str, Argument]:
    # One declaration at a time, so that an error names the argument (msgspec says `[...]`
    # for a dict's values).
    where = "$.arguments"
    try:
        section = msgspec.convert(raw.get("arguments", {}), type=dict[ArgName, Any])
        declared = {}
        for name, value in section.items():
            where = f"$.arguments.{name}"
            declared[name] = msgspec.convert(value, type=Argument)
    except msgspec.ValidationError as exc:
        path, rule = validation_path(exc)
        raise ConfigError(source, path.replace("$", where, 1), rule) from exc
    return declared


def declared_arguments(path: str | Path) -> dict[str, Argument]:
    """The arguments a launch file declares (its own, not those of files it includes)."""
    source = str(path)
    return _declared(source, _read_yaml(Path(path)))


def read_launch(path: str | Path, arguments: Mapping[str, Scalar]) -> Expanded:
    """The launch file at `path` with command-line `arguments`, expanded (ConfigError names
    the file and `$.path` of anything wrong)."""
    given = Given(values=arguments, source=str(path), path="$.arguments")
    tree, origins, values = _expand(Path(path), given, ())
    return Expanded(tree=tree, origins=origins, values=values)


def _expand(
    path: Path, given: Given, stack: tuple[Path, ...]
) -> tuple[dict[str, Any], list[Origin], dict[str, Scalar]]:
    source = str(path)
    raw = _read_yaml(path)
    values = resolve_arguments(source, _declared(source, raw), given)
    rest = substitute({k: v for k, v in raw.items() if k != "arguments"}, values, source)
    assert isinstance(rest, dict)
    directory = path.resolve().parent
    nodes = rest.get("nodes")
    origins: list[Origin] = []
    if isinstance(nodes, list):
        flat: list[Any] = []
        for index, item in enumerate(nodes):
            where = f"$.nodes[{index}]"
            if not (isinstance(item, dict) and "include" in item):
                flat.append(item)
                origins.append(Origin(source, where, directory))
                continue
            child_nodes, child_origins = _include(
                source, where, item, directory, (*stack, path.resolve())
            )
            flat.extend(child_nodes)
            origins.extend(child_origins)
        rest["nodes"] = flat
    rest["arguments"] = raw.get("arguments", {})
    return rest, origins, values


def _include(
    source: str, where: str, item: object, directory: Path, stack: tuple[Path, ...]
) -> tuple[list[Any], list[Origin]]:
    """The nodes (and their origins) of the file an include entry names."""
    try:
        entry = msgspec.convert(item, type=Include)
    except msgspec.ValidationError as exc:
        path, rule = validation_path(exc)
        raise ConfigError(source, path.replace("$", where, 1), rule) from exc
    target = (directory / entry.include).resolve()
    if target in stack:
        chain = " -> ".join(p.name for p in (*stack, target))
        raise ConfigError(source, f"{where}.include", f"include cycle: {chain}")
    given = Given(
        values=entry.arguments,
        source=source,
        path=f"{where}.arguments",
        where=f"by the include at {where}",
    )
    tree, origins, _ = _expand(target, given, stack)
    for key in _TOP_ONLY:
        if key in tree:
            raise ConfigError(
                str(target),
                f"$.{key}",
                f"{key}: belongs in the top launch file, not an included one",
            )
    nodes = tree.get("nodes")
    if not isinstance(nodes, list):
        raise ConfigError(str(target), "$.nodes", "an included file needs a list of nodes")
    return nodes, origins
