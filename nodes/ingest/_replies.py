"""Replies to clients, never blocking and never piling up for a client that does not read.

The client ROUTER has a high-water mark per peer (`reply_backlog`) and `ROUTER_MANDATORY`,
so a reply to a peer whose queue is full fails at once (EAGAIN) instead of growing the
ingest's memory, and one to a peer that left fails too (EHOSTUNREACH) instead of vanishing.
A dropped reply is counted per peer; when that peer reads again (a send to it succeeds), it
first gets a `RepliesDropped` naming the requests whose answers it missed.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import zmq

from vigil.bus.channel import Channel
from vigil.bus.envelope import Envelope
from vigil.schemas import DiagCode, RepliesDropped

__all__ = ["Delivery", "Replies"]

_MAX_SEQS = 1024


class Delivery(enum.Enum):
    """What became of one reply."""

    SENT = "sent"
    DROPPED = "dropped"  # the peer's queue was full: counted and reported later
    GONE = "gone"  # the peer is no longer connected


@dataclass(slots=True)
class _Missed:
    count: int = 0
    seqs: deque[int] = field(default_factory=lambda: deque(maxlen=_MAX_SEQS))


# implements: SR-RL-003
class Replies:
    """Sends replies on the client ROUTER; remembers, per peer, what it could not deliver."""

    def __init__(self, channel: Channel, *, max_peers: int = 1024) -> None:
        self._channel = channel
        self._missed: OrderedDict[bytes, _Missed] = OrderedDict()
        self._max_peers = max_peers
        self.dropped = 0
        self.gone = 0
        self.reported = 0

    @property
    def owed(self) -> int:
        """Peers that still have to be told about dropped replies."""
        return len(self._missed)

    def send(self, identity: bytes, body: bytes, envelope: Envelope) -> Delivery:
        """Send one reply (its encoded body) without blocking."""
        if identity in self._missed and not self._report(identity):
            return self._drop(identity, envelope.seq)  # still not reading: in order, behind
        delivery = self._try(identity, body, envelope)
        if delivery is Delivery.DROPPED:
            self._drop(identity, envelope.seq)
        return delivery

    def retry(self) -> None:
        """Tell peers that read again what they missed (called on the node's timer)."""
        for identity in list(self._missed):
            self._report(identity)

    def _try(self, identity: bytes, body: bytes, envelope: Envelope) -> Delivery:
        try:
            self._channel.forward([body], identity=[identity], envelope=envelope, flags=zmq.NOBLOCK)
        except zmq.Again:
            return Delivery.DROPPED
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.gone += 1
            self._missed.pop(identity, None)
            return Delivery.GONE
        return Delivery.SENT

    def _drop(self, identity: bytes, seq: int) -> Delivery:
        missed = self._missed.get(identity)
        if missed is None:
            if len(self._missed) >= self._max_peers:
                self._missed.popitem(last=False)  # bounded: the oldest debt is forgotten
            missed = self._missed[identity] = _Missed()
        missed.count += 1
        missed.seqs.append(seq)
        self.dropped += 1
        return Delivery.DROPPED

    def _report(self, identity: bytes) -> bool:
        """Send the peer its `RepliesDropped`; True once it went out (or the peer is gone)."""
        missed = self._missed[identity]
        notice = RepliesDropped(
            count=missed.count, seqs=list(missed.seqs), diag_code=DiagCode.REPLY_DROPPED
        )
        envelope = self._channel.envelope(notice, seq=0)
        delivery = self._try(identity, self._channel.encode(notice), envelope)
        if delivery is Delivery.DROPPED:
            return False
        if delivery is Delivery.SENT:
            self.reported += 1
        self._missed.pop(identity, None)
        return True
