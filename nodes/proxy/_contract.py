"""The bus proxy's configuration and contract: it forwards, and publishes only as a node."""

from __future__ import annotations

from vigil.nodes.contract import NodeContract, NodeKind, published
from vigil.schemas._base import Config as NodeConfig

__all__ = ["KIND", "Config", "ProxyConfig"]


class ProxyConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The proxy needs nothing but its run directory's endpoints."""


Config = ProxyConfig


def _contract(config: ProxyConfig) -> NodeContract:
    return NodeContract(publishes=published(), subscribes=frozenset())


KIND = NodeKind(
    name="proxy", config=ProxyConfig, contract=_contract, implementation="vigil.nodes.proxy._node"
)
