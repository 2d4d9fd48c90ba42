"""The logger's configuration and contract: the stores and the topics it seals."""

from __future__ import annotations

import msgspec

from vigil.nodes.contract import NodeContract, NodeKind, published
from vigil.nodes.logger.store import StoreConfig
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "LoggerConfig"]


class LoggerConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The stores and the topics whose messages they seal.

    `store.signing_key` names the Ed25519 key (PEM) that signs the stores' checkpoints
    (`vigil log keygen` makes one); without it the logger generates `log.key` and `log.pub`
    in the run directory on first start and says so. `evidence` is the store that keeps
    safety evidence apart from request traffic (default: beside `store`, see `_evidence`).
    """

    store: StoreConfig
    evidence: StoreConfig | None = None
    topics: list[str] = msgspec.field(
        default_factory=lambda: [
            Topic.DIAGNOSTIC,
            Topic.AUDIT,
            Topic.SAFETY_STATE,
            Topic.MODEL_EVENT,
            Topic.MODEL_ACTIVE,
            Topic.LOG,
            Topic.REQUEST_EVIDENCE,
        ]
    )
    # Seal what `vigil bag play` publishes on these topics, as `log.replay` entries that name
    # the replay (never as live ones); off: leave replayed messages out.
    seal_replay: bool = True


Config = LoggerConfig


def _contract(config: LoggerConfig) -> NodeContract:
    # The logger seals whatever arrives; a topic nobody publishes is simply never sealed. It
    # publishes its stores' checkpoints (and a diagnostic when a disk fills).
    return NodeContract(
        publishes=published(Topic.LOG_CHECKPOINT, Topic.DIAGNOSTIC),
        subscribes=frozenset(config.topics),
    )


KIND = NodeKind(
    name="logger",
    config=LoggerConfig,
    contract=_contract,
    implementation="vigil.nodes.logger.node",
)
