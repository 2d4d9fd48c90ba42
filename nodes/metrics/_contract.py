"""The metrics node's configuration and contract: it listens to the bus and serves a page."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.nodes.contract import NodeContract, NodeKind, published
from vigil.schemas import TOPICS, Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["COUNTED", "KIND", "Config", "MetricsConfig"]

# Every topic but the requests themselves: they carry pixels and no figure (each request's
# outcome and timings arrive as its result and its evidence), and while anyone subscribes to
# them the ingest encodes and sends every frame a second time.
COUNTED = frozenset(TOPICS) - {Topic.INFER_REQUEST}


class MetricsConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where `/metrics` is served: loopback unless a scraper on another host needs it."""

    bind: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "127.0.0.1"
    # 0 lets the kernel choose a free port; the node reports the one it got in graph.json
    # (endpoint `metrics`), so a test or a second launch never races for a fixed number.
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464


Config = MetricsConfig


def _contract(config: MetricsConfig) -> NodeContract:
    # It counts whatever is published; a topic nobody publishes is a zero on the dashboard.
    return NodeContract(publishes=published(), subscribes=COUNTED)


KIND = NodeKind(
    name="metrics",
    config=MetricsConfig,
    contract=_contract,
    implementation="vigil.nodes.metrics._node",
)
