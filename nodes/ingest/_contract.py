"""The ingest's configuration and contract: what it publishes, subscribes, binds and bounds."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.nodes.contract import Endpoint, EndpointRole, NodeContract, NodeKind, Queue, published
from vigil.nodes.ingest._peers import TenantBinding
from vigil.nodes.ingest._ratelimit import RateLimitConfig
from vigil.nodes.ingest._validate import DEFAULT_MAX_MESSAGE_BYTES
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = [
    "KIND",
    "RSS_BASE_MB",
    "RSS_GUARD_MARGIN_MB",
    "Config",
    "DegradedPolicy",
    "EvidenceConfig",
    "IngestConfig",
    "max_frame_bytes",
    "rss_budget",
    "rss_threshold",
]

_MIB = 1 << 20
# What the ingest process needs before any request: the interpreter, pyzmq, msgspec, the
# bus and its own tables (measured at about 40 MiB; docs/admission.md).
RSS_BASE_MB = 64
# What memory may grow by between crossing the guard's threshold and the guard's cut.
RSS_GUARD_MARGIN_MB = 64


class DegradedPolicy(enum.StrEnum):
    """What the ingest does with new requests while the system is not NORMAL."""

    FLAG = "flag"  # serve everything, flag every result as degraded
    SHED_LOW_PRIORITY = "shed_low_priority"  # refuse low priority with UNAVAILABLE, flag the rest
    REJECT = "reject"  # refuse everything with UNAVAILABLE


class EvidenceConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How many refusals are sealed one by one before they are sealed as aggregates."""

    rate_per_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    burst: Annotated[float, msgspec.Meta(ge=1)] = 50.0
    peer_rate_per_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    peer_burst: Annotated[float, msgspec.Meta(ge=1)] = 20.0
    aggregate_ms: Annotated[int, msgspec.Meta(ge=10)] = 1000
    # At most one REQUEST_REJECTED audit record this often (audit records are kept in the
    # logger's evidence store, which a flood must not wear out).
    audit_ms: Annotated[int, msgspec.Meta(ge=10)] = 60_000


class IngestConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ingest's endpoints, limits and policies (docs/admission.md explains each)."""

    frontend: str = "ingest"
    backend: str = "workers"
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = DEFAULT_MAX_MESSAGE_BYTES
    max_height: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1080
    max_width: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1920
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 256
    # Bytes of every open request the ingest holds (queued, or handed to a worker).
    max_queue_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * _MIB
    # Client connections at once (kept below the open-file limit: libzmq aborts on EMFILE),
    # and at once from one client process.
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 16
    max_connections_per_peer: Annotated[int, msgspec.Meta(ge=1)] = 8
    # A connection that has not completed its handshake by then is closed.
    handshake_ms: Annotated[int, msgspec.Meta(ge=10)] = 2000
    # Messages taken in from one client ahead of the ingest reading them (its RCVHWM).
    peer_backlog: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Replies queued to one client that does not read, before they are dropped (its SNDHWM).
    reply_backlog: Annotated[int, msgspec.Meta(ge=1)] = 256
    # Refusals (and sheds) a second, over a burst, beyond which the ingest reads its clients
    # only as fast as this: a client sending what is refused is held back by its own socket
    # instead of spending the CPU that served clients need. Reading stays fair per connection
    # (ZeroMQ takes one message from each in turn). 0: no pace.
    refusals_per_s: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    refusal_burst: Annotated[int, msgspec.Meta(ge=1)] = 200
    # The ingest's peak resident memory budget in MiB; 0: derived from the limits.
    rss_budget_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A request is admitted only if its budget covers this many times the estimated wait.
    admission_margin: Annotated[float, msgspec.Meta(ge=1)] = 1.25
    # A worker holding work is given more only while it holds at most this much (at the
    # measured prices); the rest waits in the ingest's fair queue.
    worker_hold_ms: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # A peer that had a request admitted within this long is active; while others are, a
    # peer's work occupies at most all workers but one for each of them (0: no such limit).
    peer_active_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    # While a request of a peer within its share is in flight, requests of peers beyond
    # theirs wait in the queue for at most this long at a time, then go for as long as they
    # waited (0: they never wait for it).
    background_yield_ms: Annotated[int, msgspec.Meta(ge=0)] = 200
    # While others are active in its class, a request estimated at more than this much work,
    # or of a frame size never measured, is bulk and runs in the background (0: none is).
    bulk_ms: Annotated[int, msgspec.Meta(ge=0)] = 250
    default_deadline_ms: Annotated[int, msgspec.Meta(ge=1)] = 2000
    max_deadline_ms: Annotated[int, msgspec.Meta(ge=1)] = 30_000
    # A worker that holds work and says nothing for this long is presumed hung.
    worker_silence_ms: Annotated[int, msgspec.Meta(ge=10)] = 1500
    degraded_policy: DegradedPolicy = DegradedPolicy.SHED_LOW_PRIORITY
    shed_below_priority: Annotated[int, msgspec.Meta(ge=0, le=8)] = 4
    rate_limit: RateLimitConfig = RateLimitConfig()  # per tenant
    peer_rate_limit: RateLimitConfig = RateLimitConfig()  # per authenticated peer
    # Tenants and priority ceilings bound to authenticated peers (Curve key or ipc uid).
    bindings: list[TenantBinding] = []
    # The priority ceiling of peers without a binding: a priority is a privilege a binding
    # grants, so that no client can claim precedence over the others. The safety priority
    # (7, the watchdog's probe) is the launch's own nodes'.
    default_max_priority: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    evidence: EvidenceConfig = EvidenceConfig()
    publish_requests: bool = True
    # One RequestEvidence per request at its end (the logger seals it). Off only to measure
    # what it costs (`vigil bench serve --evidence-cost`): without it a served request leaves
    # no sealed trace.
    publish_evidence: bool = True
    # While no verified model is active, refuse each request at once (UNAVAILABLE, DIA-5003)
    # instead of letting it wait out its deadline. Off only for an ingest that admits and
    # publishes requests with no worker behind it (taps and benches of the front door).
    require_model: bool = True
    # Answers kept by request id, so a request a client re-sends after failing over is
    # answered again instead of run again (0: none kept).
    dedup_window: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 4096

    def __post_init__(self) -> None:
        if self.rss_budget_mb and self.rss_budget_mb < RSS_BASE_MB + RSS_GUARD_MARGIN_MB:
            raise ValueError(
                f"rss_budget_mb must be 0 (derived) or at least {RSS_BASE_MB + RSS_GUARD_MARGIN_MB}"
            )


Config = IngestConfig


def max_frame_bytes(config: IngestConfig) -> int:
    """The largest frame the client socket takes in (ZMQ_MAXMSGSIZE): twice the message
    limit, so that a message somewhat over the limit is received and refused with a typed
    error, while a larger frame drops its connection before it is received whole."""
    return 2 * config.max_message_bytes


def rss_threshold(config: IngestConfig) -> int:
    """Resident memory the ingest's limits allow (bytes): above it, the door's guard acts.

    The base, every open request's bytes, and per connection what libzmq may hold for it: the
    messages of its receive backlog plus one more being received, and its queued replies.
    """
    if config.rss_budget_mb:
        return (config.rss_budget_mb - RSS_GUARD_MARGIN_MB) * _MIB
    per_connection = (config.peer_backlog + 1) * max_frame_bytes(config)
    replies = config.reply_backlog * 1024
    return (
        RSS_BASE_MB * _MIB
        + config.max_queue_bytes
        + config.max_connections * (per_connection + replies)
    )


def rss_budget(config: IngestConfig) -> int:
    """The ingest's peak resident memory budget in bytes (docs/admission.md): what its limits
    allow, plus what may grow while the guard cuts a peer that would take more."""
    return rss_threshold(config) + RSS_GUARD_MARGIN_MB * _MIB


def _contract(config: IngestConfig) -> NodeContract:
    # What bounds the ingest's memory is admission: at most `max_queue` requests queued and
    # `max_queue_bytes` held; each client may have `peer_backlog` messages unread and
    # `reply_backlog` replies unsent (beyond, its replies are dropped, counted and reported).
    return NodeContract(
        publishes=published(
            Topic.INFER_REQUEST,
            Topic.INFER_RESULT,
            Topic.INFER_ERROR,
            Topic.DIAGNOSTIC,
            Topic.AUDIT,
            Topic.REQUEST_EVIDENCE,
        ),
        subscribes=frozenset({Topic.SAFETY_STATE, Topic.HEARTBEAT, Topic.MODEL_ACTIVE}),
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
            # What every open request holds, counted in bytes: the tighter of the two bounds.
            Queue(name="ingest.max_queue_bytes", bound=config.max_queue_bytes, item_bytes=1),
            Queue(
                name="ingest.reply_backlog",
                bound=config.max_connections * config.reply_backlog,
                item_bytes=1024,
            ),
        ),
        request_path=True,
    )


KIND = NodeKind(
    name="ingest",
    config=IngestConfig,
    contract=_contract,
    implementation="vigil.nodes.ingest._node",
    # Refuses a connection that finds no descriptor free, where libzmq would abort (_door.py).
    preload=("vigil.nodes.ingest._acceptguard",),
)
