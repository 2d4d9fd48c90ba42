"""Who sent a request: the authenticated peer behind a connection, and what it may claim.

ZeroMQ hands every received frame the metadata of its connection. On a Curve endpoint the
ZAP handler authenticated the client's public key and named it as the `User-Id`; on ipc the
kernel vouches for the other process (`SO_PEERCRED`, which libzmq appends to `Peer-Address`
as `:uid:gid:pid`). Neither can be forged by what a client writes into a message, so the
ingest keys everything a client must not touch for another (streams, fair shares, rate
buckets, tenants) by that peer, never by the self-declared `tenant` or routing id alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec
import zmq

from vigil.schemas._base import Config as NodeConfig

__all__ = ["SAFETY_PRIORITY", "Identities", "Peer", "TenantBinding", "peer_of"]

# The watchdog's known-answer probe: only the launch's own nodes may use it.
SAFETY_PRIORITY = 7
_NODE_CHECK_NS = 1_000_000_000


class TenantBinding(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The tenant and the priority ceiling of one authenticated peer.

    A Curve client is named by its public `key` (z85, or the path of its `.key` certificate);
    an ipc client by the `uid` it runs as. Exactly one of the two.
    """

    tenant: Annotated[str, msgspec.Meta(max_length=64)]
    key: str = ""
    uid: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_priority: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0

    def __post_init__(self) -> None:
        if bool(self.key) == (self.uid is not None):
            raise ValueError("a tenant binding names exactly one of `key` and `uid`")


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated client: its stable name, and the tenant bound to it (if any)."""

    name: str  # "key:<z85>" on Curve, "uid:<uid>/pid:<pid>" on ipc
    uid: int | None = None
    pid: int | None = None
    tenant: str | None = None
    max_priority: int = 0


def peer_of(frame: zmq.Frame) -> Peer:
    """The peer (unbound) from a received frame's connection metadata."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        user = ""
    if user:
        return Peer(f"key:{user}")
    try:
        address = str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return Peer("unknown")
    head, _, rest = address.partition(":")
    creds = rest.split(":")
    if len(creds) == 3 and all(part.isdigit() for part in creds):
        uid, _, pid = creds
        return Peer(f"uid:{uid}/pid:{pid}", int(uid), int(pid))
    return Peer(f"addr:{head or address}")


# implements: SR-SEC-003
class Identities:
    """Resolves the peer of each message and judges its tenant and priority claims.

    The safety priority belongs to the launch's own nodes (the watchdog's probe): an ipc peer
    is one when its pid is a node's in the launcher's run graph, a Curve peer when it
    connects with a node key.
    """

    def __init__(
        self,
        bindings: Sequence[TenantBinding],
        *,
        default_max_priority: int = 0,
        resolve_key: Callable[[str], str] = lambda key: key,
        node_keys: frozenset[str] = frozenset(),
        node_pids: Callable[[], frozenset[int]] = frozenset,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._by_key = {resolve_key(b.key): b for b in bindings if b.key}
        self._by_uid = {b.uid: b for b in bindings if b.uid is not None}
        self._bound_tenants = frozenset(b.tenant for b in bindings)
        self._default = default_max_priority
        self._node_keys = node_keys
        self._node_pids = node_pids
        self._clock = clock
        self._nodes: frozenset[int] = frozenset()
        self._nodes_read_ns: int | None = None

    def peer(self, frame: zmq.Frame) -> Peer:
        """The authenticated peer a frame came from, with its binding."""
        peer = peer_of(frame)
        binding = None
        if peer.name.startswith("key:"):
            binding = self._by_key.get(peer.name[4:])
        elif peer.uid is not None:
            binding = self._by_uid.get(peer.uid)
        if binding is None:
            return Peer(peer.name, peer.uid, peer.pid, None, self._default)
        return Peer(peer.name, peer.uid, peer.pid, binding.tenant, binding.max_priority)

    def tenant(self, peer: Peer, claimed: str) -> str | None:
        """The tenant a request counts against, or None when its claim is refused.

        A bound peer is its tenant (an empty claim means it); a tenant bound to some peer is
        never anyone else's to claim.
        """
        if peer.tenant is not None:
            return peer.tenant if claimed in ("", peer.tenant) else None
        return None if claimed in self._bound_tenants else claimed

    def may_use(self, peer: Peer, priority: int) -> bool:
        """Whether `peer` may send at `priority` (its ceiling, or the launch's own nodes)."""
        return priority <= peer.max_priority or self._is_node(peer)

    def _is_node(self, peer: Peer) -> bool:
        if peer.name.startswith("key:"):
            return peer.name[4:] in self._node_keys
        now = self._clock()
        # Read again after a second: a restarted node has a new pid, and a pid can be reused.
        if self._nodes_read_ns is None or now - self._nodes_read_ns >= _NODE_CHECK_NS:
            self._nodes = self._node_pids()
            self._nodes_read_ns = now
        return peer.pid is not None and peer.pid in self._nodes
