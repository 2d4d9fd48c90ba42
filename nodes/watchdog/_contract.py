"""The watchdog's configuration and contract: what it watches, publishes and probes."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.nodes.contract import Endpoint, EndpointRole, NodeContract, NodeKind, published
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "ProbeConfig", "WatchdogConfig", "probe_endpoints"]


class ProbeConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The known-answer health probe."""

    # The ingest frontend(s) the probe goes through; with several, it fails over like any
    # client (`vigil.client`).
    endpoint: str | list[str] = "ingest"
    timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 3000
    height: Annotated[int, msgspec.Meta(ge=32, le=1080)] = 384
    width: Annotated[int, msgspec.Meta(ge=32, le=1920)] = 640
    scene: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A JSON PerceptionOutput to compare against; empty means: learn it from the first
    # probe answered while NORMAL after start-up (recorded in the log as the golden answer).
    expected: str = ""
    min_iou: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.7
    score_tol: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    learn_interval_ms: Annotated[int, msgspec.Meta(ge=10)] = 500


class WatchdogConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds of the safety state machine and what it watches."""

    # 0: a node is overdue 2.5 of its own heartbeat periods after its last beat (one missed
    # beat is tolerated, two are not: detection within 3 periods of the fault).
    heartbeat_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Per-node deadlines (node label -> ms), overriding the default above.
    deadlines_ms: dict[str, Annotated[int, msgspec.Meta(ge=1)]] = {}
    watch: list[str] = []
    timeout_limit: Annotated[int, msgspec.Meta(ge=1)] = 3
    recovery_delay_ms: Annotated[int, msgspec.Meta(ge=0)] = 1000
    max_recoveries: Annotated[int, msgspec.Meta(ge=1)] = 3
    # Hysteresis: DEGRADED lasts at least `min_dwell_ms`; more than `flap_limit`
    # degradations in a minute double the recovery delay, up to `max_recovery_delay_ms`.
    min_dwell_ms: Annotated[int, msgspec.Meta(ge=0)] = 500
    flap_limit: Annotated[int, msgspec.Meta(ge=0)] = 3
    max_recovery_delay_ms: Annotated[int, msgspec.Meta(ge=1)] = 30_000
    staleness_ms: dict[str, Annotated[int, msgspec.Meta(ge=1)]] = {}
    # How long a (re)started watchdog waits for the latched state before it declares its own.
    resume_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 300
    probe: ProbeConfig = ProbeConfig()
    # Follow replayed messages (`vigil bag play`) as if live: for a bench that drives the
    # machine from a recording. Off: a replay never moves the live safety state.
    accept_replay: bool = False


Config = WatchdogConfig


def probe_endpoints(config: WatchdogConfig) -> list[str]:
    """The ingest frontends the probe may use, in order of preference."""
    endpoint = config.probe.endpoint
    return [endpoint] if isinstance(endpoint, str) else list(endpoint)


def _contract(config: WatchdogConfig) -> NodeContract:
    stale = frozenset(config.staleness_ms)
    return NodeContract(
        publishes=published(Topic.SAFETY_STATE, Topic.AUDIT, Topic.DIAGNOSTIC),
        subscribes=frozenset(
            {
                Topic.HEARTBEAT,
                Topic.NODE_EXIT,
                Topic.INFER_RESULT,
                Topic.INFER_ERROR,
                Topic.MODEL_ACTIVE,
                *stale,
            }
        ),
        # A topic watched for staleness that nobody publishes is stale from the first instant.
        requires=frozenset({Topic.HEARTBEAT, *stale}),
        endpoints=tuple(
            Endpoint(key="", role=EndpointRole.INGEST_FRONTEND, bind=False, name=name)
            for name in probe_endpoints(config)
        ),
    )


KIND = NodeKind(
    name="watchdog",
    config=WatchdogConfig,
    contract=_contract,
    implementation="vigil.nodes.watchdog._node",
)
