"""The ingest's configuration and contract: what it publishes, subscribes, binds and bounds."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.nodes.contract import Endpoint, EndpointRole, NodeContract, NodeKind, Queue, published
from vigil.nodes.ingest._ratelimit import RateLimitConfig
from vigil.nodes.ingest._validate import DEFAULT_MAX_MESSAGE_BYTES
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "DegradedPolicy", "IngestConfig"]


class DegradedPolicy(enum.StrEnum):
    """What the ingest does with new requests while the system is not NORMAL."""

    FLAG = "flag"  # serve everything, flag every result as degraded
    SHED_LOW_PRIORITY = "shed_low_priority"  # refuse low priority with UNAVAILABLE, flag the rest
    REJECT = "reject"  # refuse everything with UNAVAILABLE


class IngestConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ingest's endpoints, limits and policies."""

    frontend: str = "ingest"
    backend: str = "workers"
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = DEFAULT_MAX_MESSAGE_BYTES
    max_height: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1080
    max_width: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1920
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 256
    default_deadline_ms: Annotated[int, msgspec.Meta(ge=1)] = 2000
    max_deadline_ms: Annotated[int, msgspec.Meta(ge=1)] = 30_000
    # A worker that holds work and says nothing for this long is presumed hung.
    worker_silence_ms: Annotated[int, msgspec.Meta(ge=10)] = 1500
    degraded_policy: DegradedPolicy = DegradedPolicy.SHED_LOW_PRIORITY
    shed_below_priority: Annotated[int, msgspec.Meta(ge=0, le=8)] = 4
    rate_limit: RateLimitConfig = RateLimitConfig()
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


Config = IngestConfig


def _contract(config: IngestConfig) -> NodeContract:
    # The ROUTERs send without a high-water mark (a reply is never dropped); what bounds them
    # is admission: at most `max_queue` requests are held, each at most `max_message_bytes`.
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
        ),
        request_path=True,
    )


KIND = NodeKind(
    name="ingest",
    config=IngestConfig,
    contract=_contract,
    implementation="vigil.nodes.ingest._node",
)
