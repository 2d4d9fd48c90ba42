"""The launch-file model: YAML decoded into typed node specs, with errors that name the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from vigil.bus.channel import validation_path
from vigil.bus.curve import CurveConfig
from vigil.errors import ConfigError
from vigil.launch._arguments import ArgName, Argument, Scalar
from vigil.launch._include import Expanded, declared_arguments, read_launch
from vigil.nodes.contract import NodeArgs
from vigil.nodes.kinds import node_kinds
from vigil.schemas import Config

__all__ = [
    "Argument",
    "BusSpec",
    "LaunchFile",
    "LaunchPlan",
    "Limits",
    "NodeSpec",
    "PlannedProcess",
    "RestartPolicy",
    "SecuritySpec",
    "describe_arguments",
    "load",
]

NodeName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
KeyName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
UserName = Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]

# Node kinds that bind tcp endpoints others connect to: they are Curve servers and need the
# server's key pair and the allow-list (the proxy, which the launcher adds, is one too).
_BINDING_KINDS = frozenset({"ingest"})


class RestartPolicy(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the launcher restarts a node that exits unexpectedly."""

    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    backoff_initial_ms: Annotated[int, msgspec.Meta(ge=0)] = 100
    backoff_max_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    # A node whose heartbeat is this many of its periods late while its process lives is
    # hung: the launcher kills it and restarts it like any exit (0: never).
    hang_beats: Annotated[int, msgspec.Meta(ge=0)] = 10


class Limits(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resource limits of a node process (setrlimit in the child before exec)."""

    address_space_mb: Annotated[int, msgspec.Meta(ge=16)] | None = None
    open_files: Annotated[int, msgspec.Meta(ge=16)] | None = None
    core_dumps: bool = True


class SecuritySpec(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """CurveZMQ keys for tcp endpoints (`vigil keys gen` makes them).

    `keys_dir` holds `NAME.key` (public) and `NAME.key_secret` files, relative to the launch
    file. `allowed` names the client keys let in, or is a directory of public keys; the
    nodes' own keys are always allowed.
    """

    keys_dir: str
    server_key: KeyName = "server"
    node_key: KeyName = "node"
    allowed: list[KeyName] | str = []


class BusSpec(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the bus proxy binds when the bus runs over tcp (leave out for ipc).

    `host` names an entry of `hosts` (a multi-host launch); `address` binds on this machine.
    """

    host: NodeName | None = None
    address: str | None = None
    pub_port: Port = 7650
    sub_port: Port = 7651


class NodeSpec(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node of a launch file (replicated `replicas` times)."""

    name: NodeName
    kind: str
    replicas: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    required: bool = False
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] | None = None
    restart: RestartPolicy = RestartPolicy()
    # The stop ladder (as ROS 2 launch's): SIGINT, then SIGTERM after `stop_grace_ms`, then
    # SIGKILL after `kill_grace_ms` more.
    stop_grace_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    kill_grace_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    config: dict[str, Any] = {}
    host: NodeName | None = None
    user: UserName | None = None
    limits: Limits = Limits()
    cpu_affinity: (
        Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(min_length=1)] | None
    ) = None
    nice: Annotated[int, msgspec.Meta(ge=0, le=19)] | None = None
    key: KeyName | None = None
    # The software-instance id of the first process (replicas take the next ones), written
    # into binary audit records; by default 100 times the node's place in the file.
    instance_id: Annotated[int, msgspec.Meta(ge=2, le=(1 << 32) - 65)] | None = None


class LaunchFile(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole launch file."""

    name: NodeName
    # Declared arguments: `vigil launch FILE name:=value`, used as `$(arg name)`.
    arguments: dict[ArgName, Argument] = {}
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 200
    ready_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Nodes refuse to run as root unless this says otherwise (give them a `user:` instead).
    allow_root: bool = False
    hosts: dict[NodeName, str] = {}
    bus: BusSpec | None = None
    # How the launcher restarts the bus proxy it adds (a listed node's `restart`, for it).
    proxy_restart: RestartPolicy = RestartPolicy()
    security: SecuritySpec | None = None
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
    """A resolved launch file: every process in start order (of one host, when placed).

    `proxy` is the bus proxy when it runs here (None on a host that only connects to it);
    `pub`/`sub` are the proxy's endpoints ("" for the run directory's ipc endpoints) and
    `curve` the keys the launcher itself connects with.
    """

    source: str
    launch: LaunchFile
    processes: list[PlannedProcess]
    arguments: dict[str, Scalar] = {}
    host: str = ""
    proxy: PlannedProcess | None = None
    pub: str = ""
    sub: str = ""
    curve: CurveConfig | None = None

    def describe(self) -> str:
        """The plan as text for `vigil launch --print`."""
        where = f" on host {self.host}" if self.host else ""
        bus = f"; bus {self.pub} / {self.sub}" if self.pub else ""
        lines = [f"launch {self.launch.name} from {self.source}{where}{bus}"]
        if self.arguments:
            given = " ".join(f"{k}:={_spelt(v)}" for k, v in self.arguments.items())
            lines.append(f"  arguments: {given}")
        for p in self.processes:
            flags = " required" if p.spec.required else ""
            if p.spec.host:
                flags += f" host={p.spec.host}"
            if p.spec.user:
                flags += f" user={p.spec.user}"
            flags += f" id={p.args.instance_id}"
            cfg = msgspec.json.encode(p.config).decode()
            lines.append(f"  {p.label:<16} {p.spec.kind:<12}{flags} {cfg}")
        return "\n".join(lines)


def describe_arguments(path: str | Path) -> str:
    """The arguments a launch file declares, as text for `vigil launch FILE --show-args`."""
    declared = declared_arguments(path)
    if not declared:
        return f"{path} declares no arguments"
    lines = [f"arguments of {path} (give them as NAME:=VALUE):"]
    for name, argument in declared.items():
        default = "required" if argument.default is None else f"default {_spelt(argument.default)}"
        lines.append(f"  {name:<16} {argument.type:<6} {default}")
        if argument.choices is not None:
            lines.append(f"      one of: {', '.join(_spelt(c) for c in argument.choices)}")
        if argument.description:
            lines.append(f"      {argument.description}")
    return "\n".join(lines)


_INDEX = re.compile(r"^\$")
_NODE_PATH = re.compile(r"^\$\.nodes\[(?P<index>\d+)\](?P<rest>.*)$")


def _spelt(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fail(
    source: str, exc: msgspec.ValidationError, expected: Any, prefix: str = "$"
) -> ConfigError:
    path, rule = validation_path(exc, expected)
    return ConfigError(source, _INDEX.sub(prefix, path) if path else prefix, rule)


def _decode(source: str, expanded: Expanded) -> LaunchFile:
    """The typed launch file; an error inside a node names the file it was written in."""
    try:
        return msgspec.convert(expanded.tree, type=LaunchFile)
    except msgspec.ValidationError as exc:
        path, rule = validation_path(exc, LaunchFile)
        node = _NODE_PATH.match(path)
        if node is not None and int(node["index"]) < len(expanded.origins):
            origin = expanded.origins[int(node["index"])]
            raise ConfigError(origin.source, origin.path + node["rest"], rule) from exc
        raise ConfigError(source, path or "$", rule) from exc


def load(
    path: str | Path,
    run_dir: str | Path,
    *,
    host: str | None = None,
    arguments: Mapping[str, Scalar] | None = None,
) -> LaunchPlan:
    """Read, validate and resolve a launch file into a plan; ConfigError names what is wrong.

    `arguments` are the values of its declared arguments (`name:=value` on the command line,
    as text or typed). With `host`, the plan holds only the nodes placed on that host (and
    the proxy when the bus lives there); without it, every node of the file.
    """
    source = str(path)
    expanded = read_launch(path, arguments or {})
    launch = _decode(source, expanded)
    launch_dir = Path(path).resolve().parent
    bus_host, pub, sub = _bus(source, launch, host)
    keys = _Keys(source, launch, launch_dir)
    seen: set[str] = set()
    ids: dict[int, str] = {PROXY_INSTANCE_ID: "proxy"}
    processes: list[PlannedProcess] = []
    kinds = node_kinds()
    for index, (spec, origin) in enumerate(zip(launch.nodes, expanded.origins, strict=True)):
        written, where = origin.source, origin.path
        first_id = spec.instance_id or 100 * (index + 1)
        for taken in range(first_id, first_id + spec.replicas):
            if taken in ids:
                raise ConfigError(
                    written, f"{where}.instance_id", f"instance id {taken} is {ids[taken]}'s"
                )
            ids[taken] = spec.name
        if spec.name in seen:
            raise ConfigError(written, f"{where}.name", f"duplicate node name {spec.name!r}")
        seen.add(spec.name)
        if spec.kind not in kinds or spec.kind == "proxy":
            known = ", ".join(sorted(k for k in kinds if k != "proxy"))
            raise ConfigError(
                written, f"{where}.kind", f"unknown node kind; expected one of {known}"
            )
        try:
            config = msgspec.convert(spec.config, type=kinds[spec.kind].config)
        except msgspec.ValidationError as exc:
            raise _fail(written, exc, kinds[spec.kind].config, f"{where}.config") from exc
        placed = spec.host or bus_host
        if spec.host is not None and spec.host not in launch.hosts:
            raise ConfigError(written, f"{where}.host", f"unknown host {spec.host!r}")
        if launch.security is None and _uses_tcp(msgspec.to_builtins(config)):
            raise ConfigError(
                written, f"{where}.config", "tcp endpoints need a security: section (CurveZMQ)"
            )
        if host is not None and placed != host:
            continue
        curve = keys.curve(spec.key, serves=spec.kind in _BINDING_KINDS, where=where)
        for instance in range(spec.replicas):
            args = NodeArgs(
                name=spec.name,
                kind=spec.kind,
                instance=instance + 1 if spec.replicas > 1 else 0,
                run_dir=str(run_dir),
                heartbeat_ms=spec.heartbeat_ms or launch.heartbeat_ms,
                launch_dir=str(origin.directory),
                pub_endpoint=pub,
                sub_endpoint=sub,
                curve=curve,
                allow_root=launch.allow_root,
                host=placed,
                instance_id=first_id + instance,
            )
            processes.append(PlannedProcess(spec=spec, args=args, config=config))
    proxy = None
    if host is None or host == bus_host:
        proxy_args = NodeArgs(
            name="proxy",
            kind="proxy",
            run_dir=str(run_dir),
            heartbeat_ms=launch.heartbeat_ms,
            launch_dir=str(launch_dir),
            pub_endpoint=pub,
            sub_endpoint=sub,
            curve=keys.curve(None, serves=True, where="$.bus"),
            allow_root=launch.allow_root,
            host=bus_host,
            instance_id=PROXY_INSTANCE_ID,
        )
        spec = msgspec.structs.replace(PROXY_SPEC, restart=launch.proxy_restart)
        proxy = PlannedProcess(spec=spec, args=proxy_args, config=kinds["proxy"].config())
    return LaunchPlan(
        source=source,
        launch=launch,
        processes=processes,
        arguments=expanded.values,
        host=host or "",
        proxy=proxy,
        pub=pub,
        sub=sub,
        curve=keys.curve(None, serves=False, where="$.security"),
    )


PROXY_SPEC = NodeSpec(name="proxy", kind="proxy", required=True)
# Software-instance ids of what no launch file lists: the launcher is 0, its proxy 1.
LAUNCHER_INSTANCE_ID = 0
PROXY_INSTANCE_ID = 1


def _bus(source: str, launch: LaunchFile, host: str | None) -> tuple[str, str, str]:
    """(the bus's host name, pub endpoint, sub endpoint); endpoints "" for ipc."""
    bus = launch.bus
    if host is not None and host not in launch.hosts:
        known = ", ".join(sorted(launch.hosts)) or "none"
        raise ConfigError(source, "$.hosts", f"no host {host!r} in this file (hosts: {known})")
    if bus is None:
        if launch.hosts:
            raise ConfigError(source, "$.bus", "a launch over hosts needs bus: {host: NAME}")
        return "", "", ""
    if launch.security is None:
        raise ConfigError(source, "$.security", "a tcp bus needs a security: section (Curve)")
    if (bus.host is None) == (bus.address is None):
        raise ConfigError(source, "$.bus", "give exactly one of bus.host and bus.address")
    if bus.host is not None:
        if bus.host not in launch.hosts:
            raise ConfigError(source, "$.bus.host", f"unknown host {bus.host!r}")
        address = launch.hosts[bus.host]
    else:
        assert bus.address is not None
        address = bus.address
    if bus.pub_port == bus.sub_port:
        raise ConfigError(source, "$.bus", "pub_port and sub_port must differ")
    return (
        bus.host or "",
        f"tcp://{address}:{bus.pub_port}",
        f"tcp://{address}:{bus.sub_port}",
    )


def _uses_tcp(value: object) -> bool:
    if isinstance(value, str):
        return value.startswith("tcp://")
    if isinstance(value, dict):
        return any(_uses_tcp(v) for v in value.values())
    if isinstance(value, list):
        return any(_uses_tcp(v) for v in value)
    return False


class _Keys:
    """Resolves key names of the security section into the paths each process needs."""

    def __init__(self, source: str, launch: LaunchFile, launch_dir: Path) -> None:
        self.source = source
        self.security = launch.security
        if self.security is None:
            return
        self.dir = (launch_dir / self.security.keys_dir).resolve()
        own = {self.security.node_key, *(n.key for n in launch.nodes if n.key)}
        allowed = self.security.allowed
        if isinstance(allowed, str):
            folder = (launch_dir / allowed).resolve()
            if not folder.is_dir():
                raise ConfigError(source, "$.security.allowed", f"no directory {folder}")
            paths = [str(p) for p in sorted(folder.glob("*.key"))]
        else:
            paths = [str(self.dir / f"{name}.key") for name in allowed]
        self.allowed = tuple(dict.fromkeys([*paths, *(str(self.dir / f"{k}.key") for k in own)]))

    def curve(self, key: str | None, *, serves: bool, where: str) -> CurveConfig | None:
        """The keys of one process; ConfigError when a file it needs is missing."""
        if self.security is None:
            return None
        server = self.security.server_key
        config = CurveConfig(
            server_key=str(self.dir / f"{server}.key"),
            client_secret=str(self.dir / f"{key or self.security.node_key}.key_secret"),
            server_secret=str(self.dir / f"{server}.key_secret") if serves else "",
            allowed=self.allowed if serves else (),
        )
        needed = [config.server_key, config.client_secret, *config.allowed]
        if serves:
            needed.append(config.server_secret)
        for file in needed:
            if not Path(file).is_file():
                raise ConfigError(
                    self.source, where, f"missing key file {file} (make it: vigil keys gen)"
                )
        return config
