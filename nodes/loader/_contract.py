"""The loader's configuration and contract: where models come from, what it announces."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.models.repository import RepositoryConfig
from vigil.nodes.contract import NodeContract, NodeKind, published
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "LoaderConfig", "PinnedModel"]


class PinnedModel(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model file with a pinned SHA-256 (for a model that ships inside a wheel)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    # A file path, or `package:<module>/<path inside it>` for a file inside an installed wheel.
    path: str
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class LoaderConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where models come from: a signed repository (watched), or one pinned file."""

    repository: RepositoryConfig | None = None
    pinned: PinnedModel | None = None
    switch_timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 30_000
    # File events come in bursts (a copy, then a rename): act once they settle.
    settle_ms: Annotated[int, msgspec.Meta(ge=0)] = 100
    worker_timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # Follow replayed heartbeats and model events (`vigil bag play`) as if live. Off: a
    # replay never steers a rollout.
    accept_replay: bool = False
    # How long a (re)started loader waits at most for the latched committed model before it
    # decides by the repository alone.
    resume_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 1000

    def __post_init__(self) -> None:
        if (self.repository is None) == (self.pinned is None):
            raise ValueError("configure exactly one of `repository` and `pinned`")


Config = LoaderConfig


def _contract(config: LoaderConfig) -> NodeContract:
    return NodeContract(
        publishes=published(
            Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND, Topic.MODEL_EVENT, Topic.AUDIT
        ),
        subscribes=frozenset({Topic.HEARTBEAT, Topic.MODEL_EVENT, Topic.MODEL_ACTIVE}),
    )


KIND = NodeKind(
    name="loader",
    config=LoaderConfig,
    contract=_contract,
    implementation="vigil.nodes.loader._node",
)
