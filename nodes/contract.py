"""What a node kind declares, and what the launcher and a node process agree on.

A node kind is a package of `vigil.nodes` whose `__init__` exports `KIND`, a `NodeKind`: its
typed configuration, its contract as a function of that configuration (the topics it publishes
and subscribes, the sockets it binds or connects, the queues it bounds) and the module that
runs it. The node's `run()` announces its contract when it is ready (`Node.ready`), and the
graph check (`vigil.launch.check`) reads the same contract before anything starts.

This module is the floor of `vigil.nodes`: it imports no node, so every node, the launcher and
the tools can share its words.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Generic, TypeVar

import msgspec

from vigil.bus.curve import CurveConfig
from vigil.schemas import LATCHED_TOPICS, TOPICS, Config, Topic, schema_id

__all__ = [
    "ALWAYS_PUBLISHED",
    "LAUNCHER_PUBLISHES",
    "Endpoint",
    "EndpointRole",
    "ExitCode",
    "NodeArgs",
    "NodeContract",
    "NodeKind",
    "Queue",
    "published",
    "silent_bus_ns",
]

# Every node beats, logs and probes its way onto the bus from its runtime.
ALWAYS_PUBLISHED: Final = frozenset({Topic.HEARTBEAT, Topic.LOG, Topic.BUS_PROBE})
# The launcher publishes supervision events from its own socket (exits, restarts, permanent
# failures) and beats, so the watchdog supervises it in turn. Its one SAFE_STOP on a required
# node's final failure is not counted: the safety state needs a watchdog all the same.
LAUNCHER_PUBLISHES: Final = frozenset(
    {Topic.DIAGNOSTIC, Topic.AUDIT, Topic.NODE_EXIT, Topic.HEARTBEAT}
)


def silent_bus_ns(period_ns: int) -> int:
    """How long the bus carries no heartbeat before it counts as silent (the watchdog's and
    the launcher's rule): a period and a half.

    A host's nodes beat on the same ticks (`bus.clock.to_next_tick`), so beats come in one
    burst a period and nothing between; half a period of slack keeps a late burst from
    looking like the bus coming back (which would reset a hung node's deadline). No more: a
    node whose beat a real silence swallowed beats again within a period of its end, and
    that must still be before its deadline (2.5 periods), or the silence would be held
    against it.
    """
    return period_ns * 3 // 2


class ExitCode(enum.IntEnum):
    """Why a node process ended; the launcher reads it to decide on a restart."""

    OK = 0
    FAILURE = 1
    CONFIG = 2
    DEPENDENCY = 3  # something the node needs never arrived (e.g. no model announced)
    INTEGRITY = 4  # verified data failed its check (a model, a store)


class NodeArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Identity and placement of one node process, filled in by the launcher."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    kind: str
    instance: Annotated[int, msgspec.Meta(ge=0)] = 0
    run_dir: str
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 200
    launch_dir: str = "."
    # The bus proxy's endpoints; "" means the ipc endpoints in the run directory.
    pub_endpoint: str = ""
    sub_endpoint: str = ""
    # Curve keys for tcp endpoints (ipc needs none: the run directory's mode guards it).
    curve: CurveConfig | None = None
    # A node refuses to run as root unless the launch file says so.
    allow_root: bool = False
    host: str = ""
    # The software-instance id the launch file gives this process (binary audit records).
    instance_id: Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)] = 0
    # The launcher's pid: a node whose launcher is gone stops by itself, `stop_after_ms` after
    # noticing it (its place in the reverse start order), so the nodes stop in order.
    supervisor_pid: Annotated[int, msgspec.Meta(ge=0)] = 0
    stop_after_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    # No latched value can be on the bus yet for this node: its launch (on one host) started
    # the bus itself, with none kept from an earlier launch, and no process of its kind ran
    # before it. A node that waits for a latched value at start-up (the loader's model) need
    # not.
    fresh_bus: bool = False
    # Fault injection only: the file whose offset steps this node's wall clock (`bus.clock`).
    clock_offset_file: str = ""

    @property
    def label(self) -> str:
        """`name` or `name.instance` for replicas; unique within a run."""
        return self.name if self.instance == 0 else f"{self.name}.{self.instance}"


class EndpointRole(enum.StrEnum):
    """What a point-to-point socket is on the request path."""

    # The ingest's ROUTER that clients' DEALERs connect to.
    INGEST_FRONTEND = "ingest-frontend"
    # The ingest's ROUTER that workers' DEALERs connect to (credit-based dispatch).
    WORKER_BACKEND = "worker-backend"


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One point-to-point socket of a node: bound or connected, by configured name."""

    key: str
    """The key under which `ready()` reports it (empty: not reported)."""
    role: EndpointRole
    bind: bool
    name: str
    """As configured: a bare socket name in the run directory, or a full zmq address."""


class Queue(msgspec.Struct, frozen=True, kw_only=True):
    """A bounded buffer on the request path and the bound the configuration gives it."""

    name: str
    bound: int
    """Items it holds at most; 0 means unbounded."""
    item_bytes: int = 0
    """The largest item, when known (so the worst-case memory can be stated)."""


def published(*topics: str) -> frozenset[str]:
    """The topics a node publishes: `topics` and those every node's runtime publishes."""
    return frozenset({*topics, *ALWAYS_PUBLISHED})


class NodeContract(msgspec.Struct, frozen=True, kw_only=True):
    """What one node of a kind publishes, subscribes, binds and connects.

    `requires` lists the subscriptions the node cannot do its job without (a missing publisher
    is an error); the others are taken when present (a missing publisher is a warning).
    `types` overrides the catalogue's type of a topic for this node; it exists so that the
    graph check's type rule can be exercised, and a real node never needs it.
    """

    publishes: frozenset[str]
    subscribes: frozenset[str]
    requires: frozenset[str] = frozenset()
    endpoints: tuple[Endpoint, ...] = ()
    queues: tuple[Queue, ...] = ()
    request_path: bool = False
    """Whether the node carries requests (a failure interrupts serving)."""
    types: Mapping[str, str] = msgspec.field(default_factory=dict)

    @property
    def latched(self) -> frozenset[str]:
        """The topics it publishes whose last value the proxy re-sends to late joiners."""
        return self.publishes & LATCHED_TOPICS

    def topic_type(self, topic: str) -> str | None:
        """The schema id this node reads or writes `topic` as; None when uncatalogued."""
        if topic in self.types:
            return self.types[topic]
        cls = TOPICS.get(topic)
        return schema_id(cls) if cls is not None else None


C = TypeVar("C", bound=Config)


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeKind(Generic[C]):
    """One node kind as its package declares it: its configuration type, its contract as a
    function of a configuration, and the module whose `run(config, args)` runs it."""

    name: str
    config: type[C]
    contract: Callable[[C], NodeContract]
    implementation: str
    """Imported only to run the node: listing kinds or checking a graph loads no engine."""
    preload: tuple[str, ...] = ()
    """Compiled modules loaded into the node's process before any other library
    (`vigil.nodes._preload`): built with the package, left out when unbuilt."""

    def run(self, config: C, args: NodeArgs) -> int:
        """Run one node of this kind to its end; the exit code says why it ended."""
        code: int = importlib.import_module(self.implementation).run(config, args)
        return code
