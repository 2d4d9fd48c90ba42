"""The launch-file model: YAML decoded into typed node specs, with errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

from vigil.bus.channel import validation_path
from vigil.errors import ConfigError
from vigil.nodes._entry import NODE_KINDS, config_type
from vigil.nodes._runtime import NodeArgs
from vigil.schemas import Config

__all__ = ["LaunchFile", "LaunchPlan", "NodeSpec", "PlannedProcess", "RestartPolicy", "load"]

NodeName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class RestartPolicy(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the launcher restarts a node that exits unexpectedly."""

    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    backoff_initial_ms: Annotated[int, msgspec.Meta(ge=0)] = 100
    backoff_max_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000


class NodeSpec(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node of a launch file (replicated `replicas` times)."""

    name: NodeName
    kind: str
    replicas: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    required: bool = False
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] | None = None
    restart: RestartPolicy = RestartPolicy()
    stop_grace_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    config: dict[str, Any] = {}


class LaunchFile(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole launch file."""

    name: NodeName
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 200
    ready_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    nodes: Annotated[list[NodeSpec], msgspec.Meta(min_length=1)]


class PlannedProcess(msgspec.Struct, frozen=True, kw_only=True):
    """One process the launcher will start: its spec, identity and typed config."""

    spec: NodeSpec
    args: NodeArgs
    config: Any

    @property
    def label(self) -> str:
        """Unique name of this process in the run."""
        return self.args.label


class LaunchPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved launch file: every process in start order."""

    source: str
    launch: LaunchFile
    processes: list[PlannedProcess]

    def describe(self) -> str:
        """The plan as text for `vigil launch --print`."""
        lines = [f"launch {self.launch.name} from {self.source}"]
        for p in self.processes:
            flags = " required" if p.spec.required else ""
            cfg = msgspec.json.encode(p.config).decode()
            lines.append(f"  {p.label:<16} {p.spec.kind:<12}{flags} {cfg}")
        return "\n".join(lines)


_INDEX = re.compile(r"^\$")


def _fail(source: str, exc: msgspec.ValidationError, prefix: str = "$") -> ConfigError:
    path, rule = validation_path(exc)
    return ConfigError(source, _INDEX.sub(prefix, path) if path else prefix, rule)


def load(path: str | Path, run_dir: str | Path) -> LaunchPlan:
    """Read, validate and resolve a launch file into a plan; ConfigError names what is wrong."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from exc
    try:
        launch = msgspec.convert(raw, type=LaunchFile)
    except msgspec.ValidationError as exc:
        raise _fail(source, exc) from exc
    seen: set[str] = set()
    processes: list[PlannedProcess] = []
    launch_dir = str(Path(path).resolve().parent)
    for index, spec in enumerate(launch.nodes):
        where = f"$.nodes[{index}]"
        if spec.name in seen:
            raise ConfigError(source, f"{where}.name", f"duplicate node name {spec.name!r}")
        seen.add(spec.name)
        if spec.kind not in NODE_KINDS or spec.kind == "proxy":
            kinds = ", ".join(sorted(k for k in NODE_KINDS if k != "proxy"))
            raise ConfigError(
                source, f"{where}.kind", f"unknown node kind; expected one of {kinds}"
            )
        try:
            config = msgspec.convert(spec.config, type=config_type(spec.kind))
        except msgspec.ValidationError as exc:
            raise _fail(source, exc, f"{where}.config") from exc
        for instance in range(spec.replicas):
            args = NodeArgs(
                name=spec.name,
                kind=spec.kind,
                instance=instance if spec.replicas > 1 else 0,
                run_dir=str(run_dir),
                heartbeat_ms=spec.heartbeat_ms or launch.heartbeat_ms,
                launch_dir=launch_dir,
            )
            if spec.replicas > 1:
                args = msgspec.structs.replace(args, instance=instance + 1)
            processes.append(PlannedProcess(spec=spec, args=args, config=config))
    return LaunchPlan(source=source, launch=launch, processes=processes)
