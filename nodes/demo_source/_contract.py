"""The demo source's configuration and contract: a client of the ingest's frontend."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.nodes.contract import Endpoint, EndpointRole, NodeContract, NodeKind, published
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "SourceConfig"]


class SourceConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rate, streams, how often a frame is broken on purpose, and where the tally goes."""

    endpoint: str = "ingest"
    rate_hz: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 10.0
    streams: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    invalid_every: Annotated[int, msgspec.Meta(ge=0)] = 8
    deadline_ms: Annotated[int, msgspec.Meta(ge=1)] = 3000
    height: Annotated[int, msgspec.Meta(ge=32, le=1080)] = 384
    width: Annotated[int, msgspec.Meta(ge=32, le=1920)] = 640
    scenes: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 32
    report: str = "source-report.json"


Config = SourceConfig


def _contract(config: SourceConfig) -> NodeContract:
    return NodeContract(
        publishes=published(),
        subscribes=frozenset(),
        endpoints=(
            Endpoint(
                key="ingest", role=EndpointRole.INGEST_FRONTEND, bind=False, name=config.endpoint
            ),
        ),
    )


KIND = NodeKind(
    name="demo_source",
    config=SourceConfig,
    contract=_contract,
    implementation="vigil.nodes.demo_source._node",
)
