"""The static topic and endpoint contract of every node kind, in one place.

Launch files do not say which topics a node publishes or subscribes, nor which sockets it binds
or connects: the node's code does, in its `Node.ready(...)` call. `vigil graph check` needs
that contract before anything runs, so it is written down here once per kind, derived from the
node's typed configuration where the configuration changes it (the logger's topics, the
watchdog's staleness topics, every configured endpoint). `tests/integration/test_contracts.py`
launches real nodes and compares what they announce with what is written here, so the two
cannot drift apart unnoticed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from vigil.schemas import TOPICS, Topic, schema_id

if TYPE_CHECKING:
    from vigil.nodes.demo_source import SourceConfig
    from vigil.nodes.ingest import IngestConfig
    from vigil.nodes.logger import LoggerConfig
    from vigil.nodes.watchdog import WatchdogConfig
    from vigil.nodes.worker import WorkerConfig

__all__ = [
    "ALWAYS_PUBLISHED",
    "CONTRACTS",
    "LAUNCHER_PUBLISHES",
    "Endpoint",
    "EndpointRole",
    "NodeContract",
    "Queue",
    "contract_for",
]

# Every node beats, logs and probes its way onto the bus from its runtime (`Node.ready` adds
# these itself; the proxy, which carries the probe, skips it).
ALWAYS_PUBLISHED: Final = frozenset({Topic.HEARTBEAT, Topic.LOG, Topic.BUS_PROBE})
# The launcher publishes supervision events from its own socket (restarts, permanent failures).
LAUNCHER_PUBLISHES: Final = frozenset({Topic.DIAGNOSTIC, Topic.AUDIT})


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


class NodeContract(msgspec.Struct, frozen=True, kw_only=True):
    """What one node of a kind publishes, subscribes, binds and connects.

    `requires` lists the subscriptions the node cannot do its job without (a missing publisher
    is an error); the others are taken when present (a missing publisher is a warning).
    `types` overrides the catalogue's type of a topic for this node; it exists so that the
    graph check's type rule can be exercised, and a real node never needs it.
    """

    kind: str
    publishes: frozenset[str]
    subscribes: frozenset[str]
    requires: frozenset[str] = frozenset()
    endpoints: tuple[Endpoint, ...] = ()
    queues: tuple[Queue, ...] = ()
    request_path: bool = False
    """Whether the node carries requests (a failure interrupts serving)."""
    types: Mapping[str, str] = msgspec.field(default_factory=dict)

    def topic_type(self, topic: str) -> str | None:
        """The schema id this node reads or writes `topic` as; None when uncatalogued."""
        if topic in self.types:
            return self.types[topic]
        cls = TOPICS.get(topic)
        return schema_id(cls) if cls is not None else None


def _published(*topics: str) -> frozenset[str]:
    return frozenset({*topics, *ALWAYS_PUBLISHED})


def _proxy(config: Any) -> NodeContract:
    return NodeContract(kind="proxy", publishes=_published(), subscribes=frozenset())


def _ingest(config: IngestConfig) -> NodeContract:
    # The ROUTERs send without a high-water mark (a reply is never dropped); what bounds them
    # is admission: at most `max_queue` requests are held, each at most `max_message_bytes`.
    return NodeContract(
        kind="ingest",
        publishes=_published(
            Topic.INFER_REQUEST,
            Topic.INFER_RESULT,
            Topic.INFER_ERROR,
            Topic.DIAGNOSTIC,
            Topic.AUDIT,
        ),
        subscribes=frozenset({Topic.SAFETY_STATE, Topic.HEARTBEAT}),
        # Worker heartbeats prove busy workers alive; without them held work is re-dispatched.
        requires=frozenset({Topic.HEARTBEAT}),
        endpoints=(
            Endpoint(
                key="frontend",
                role=EndpointRole.INGEST_FRONTEND,
                bind=True,
                name=config.frontend,
            ),
            Endpoint(
                key="backend", role=EndpointRole.WORKER_BACKEND, bind=True, name=config.backend
            ),
        ),
        queues=(
            Queue(
                name="ingest.max_queue",
                bound=config.max_queue,
                item_bytes=config.max_message_bytes,
            ),
        ),
        request_path=True,
    )


def _worker(config: WorkerConfig) -> NodeContract:
    # A worker asks for `credit` requests (2 x max_batch by default) and never holds more.
    credit = config.credit or 2 * config.max_batch
    return NodeContract(
        kind="worker",
        publishes=_published(Topic.MODEL_EVENT, Topic.DIAGNOSTIC),
        subscribes=frozenset({Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND}),
        # Without a loader no model is ever announced and the worker never serves.
        requires=frozenset({Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND}),
        endpoints=(
            Endpoint(
                key="backend", role=EndpointRole.WORKER_BACKEND, bind=False, name=config.backend
            ),
        ),
        queues=(Queue(name="worker.credit", bound=credit),),
        request_path=True,
    )


def _watchdog(config: WatchdogConfig) -> NodeContract:
    stale = frozenset(config.staleness_ms)
    return NodeContract(
        kind="watchdog",
        publishes=_published(Topic.SAFETY_STATE, Topic.AUDIT, Topic.DIAGNOSTIC),
        subscribes=frozenset({Topic.HEARTBEAT, Topic.INFER_RESULT, Topic.INFER_ERROR, *stale}),
        # A topic watched for staleness that nobody publishes is stale from the first instant.
        requires=frozenset({Topic.HEARTBEAT, *stale}),
        endpoints=(
            Endpoint(
                key="", role=EndpointRole.INGEST_FRONTEND, bind=False, name=config.probe.endpoint
            ),
        ),
    )


def _logger(config: LoggerConfig) -> NodeContract:
    # The logger seals whatever arrives; a topic nobody publishes is simply never sealed.
    return NodeContract(kind="logger", publishes=_published(), subscribes=frozenset(config.topics))


def _loader(config: Any) -> NodeContract:
    return NodeContract(
        kind="loader",
        publishes=_published(
            Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND, Topic.MODEL_EVENT, Topic.AUDIT
        ),
        subscribes=frozenset({Topic.HEARTBEAT, Topic.MODEL_EVENT}),
    )


def _metrics(config: Any) -> NodeContract:
    # It counts whatever is published; a topic nobody publishes is a zero on the dashboard.
    return NodeContract(kind="metrics", publishes=_published(), subscribes=frozenset(TOPICS))


def _demo_source(config: SourceConfig) -> NodeContract:
    return NodeContract(
        kind="demo_source",
        publishes=_published(),
        subscribes=frozenset(),
        endpoints=(
            Endpoint(
                key="ingest", role=EndpointRole.INGEST_FRONTEND, bind=False, name=config.endpoint
            ),
        ),
    )


def _demo_sink(config: Any) -> NodeContract:
    return NodeContract(
        kind="demo_sink",
        publishes=_published(),
        subscribes=frozenset({Topic.INFER_RESULT}),
        requires=frozenset({Topic.INFER_RESULT}),
    )


ContractFactory = Callable[[Any], NodeContract]

# Node kind -> its contract as a function of the node's typed configuration.
CONTRACTS: Final[Mapping[str, ContractFactory]] = {
    "proxy": _proxy,
    "ingest": _ingest,
    "worker": _worker,
    "watchdog": _watchdog,
    "logger": _logger,
    "loader": _loader,
    "metrics": _metrics,
    "demo_source": _demo_source,
    "demo_sink": _demo_sink,
}


def contract_for(
    kind: str, config: Any, contracts: Mapping[str, ContractFactory] | None = None
) -> NodeContract:
    """The contract of one node of `kind` with its typed `config`; KeyError names the kind."""
    return (CONTRACTS if contracts is None else contracts)[kind](config)
