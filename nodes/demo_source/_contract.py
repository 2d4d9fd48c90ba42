"""The demo source's configuration and contract: a client of the ingest's frontend."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.nodes.contract import Endpoint, EndpointRole, NodeContract, NodeKind, published
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "PacingConfig", "SourceConfig", "endpoints"]


class PacingConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Measure what the pipeline sustains at start, then drive below it."""

    calibration_window: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Requests kept in flight while measuring (a closed loop, which cannot overload): about
    one per worker, so the measure includes no queueing."""
    calibration_answers: Annotated[int, msgspec.Meta(ge=2, le=10_000)] = 12
    """Answers timed, after a first window that only fills the pipeline."""
    load: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.6
    """The share of the measured rate the source then drives at."""


class SourceConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rate, streams, how often a frame is broken on purpose, and where the tally goes."""

    # The ingest frontend(s), in order of preference: the client fails over between them.
    endpoint: str | list[str] = "ingest"
    rate_hz: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 10.0
    """The camera's rate: with `pacing`, the most the source sends."""
    pacing: PacingConfig | None = None
    """None sends at `rate_hz` whatever the pipeline keeps up with."""
    streams: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    invalid_every: Annotated[int, msgspec.Meta(ge=0)] = 8
    deadline_ms: Annotated[int, msgspec.Meta(ge=1)] = 3000
    height: Annotated[int, msgspec.Meta(ge=32, le=1080)] = 384
    width: Annotated[int, msgspec.Meta(ge=32, le=1920)] = 640
    scenes: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 32
    report: str = "source-report.json"


Config = SourceConfig


def endpoints(config: SourceConfig) -> list[str]:
    """The ingest frontends the source sends to, in order of preference."""
    return [config.endpoint] if isinstance(config.endpoint, str) else list(config.endpoint)


def _contract(config: SourceConfig) -> NodeContract:
    return NodeContract(
        publishes=published(),
        subscribes=frozenset(),
        endpoints=tuple(
            Endpoint(
                key="ingest" if i == 0 else f"ingest.{i + 1}",
                role=EndpointRole.INGEST_FRONTEND,
                bind=False,
                name=name,
            )
            for i, name in enumerate(endpoints(config))
        ),
    )


KIND = NodeKind(
    name="demo_source",
    config=SourceConfig,
    contract=_contract,
    implementation="vigil.nodes.demo_source._node",
)
