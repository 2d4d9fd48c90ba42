"""The demo sink's configuration and contract: it takes results, as a planner would."""

from __future__ import annotations

from vigil.nodes.contract import NodeContract, NodeKind, published
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "SinkConfig"]


class SinkConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the sink writes what it saw."""

    report: str = "sink-report.json"


Config = SinkConfig


def _contract(config: SinkConfig) -> NodeContract:
    return NodeContract(
        publishes=published(),
        subscribes=frozenset({Topic.INFER_RESULT}),
        requires=frozenset({Topic.INFER_RESULT}),
    )


KIND = NodeKind(
    name="demo_sink",
    config=SinkConfig,
    contract=_contract,
    implementation="vigil.nodes.demo_sink._node",
)
