"""The pub/sub proxy (XSUB/XPUB) with a last-value cache for latched topics."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Self

import zmq

from vigil.bus.codec import topic_frame

__all__ = ["Proxy"]

# Frames forwarded per readiness event before returning to the poller, so one busy side
# cannot starve the other and the heartbeat.
_BURST = 256


class Proxy:
    """Forwards every publication from XSUB to XPUB and subscriptions the other way.

    For latched topics it keeps the last message and re-sends it whenever a subscription that
    matches it arrives (XPUB_VERBOSE passes every subscription, not only the first), so a late
    joiner gets the current value at once. Subscribers that had it already drop the copy as a
    duplicate by its sequence number.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        frontend: str,
        backend: str,
        latched: Iterable[str] = (),
    ) -> None:
        self.frontend: zmq.Socket[bytes] = ctx.socket(zmq.XSUB)
        self.backend: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        for sock in (self.frontend, self.backend):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
        self.backend.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.frontend.bind(frontend)
        self.backend.bind(backend)
        self._latched = {topic_frame(t) for t in latched}
        self._last: dict[bytes, list[bytes]] = {}
        self.forwarded = 0

    def register(self, poller: zmq.Poller) -> None:
        """Add both sockets to a poller."""
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)

    def handle(self, events: dict[zmq.Socket[bytes], int]) -> None:
        """Forward whatever the poller found ready, in bounded bursts."""
        if events.get(self.frontend):
            self._forward_publications()
        if events.get(self.backend):
            self._forward_subscriptions()

    def _forward_publications(self) -> None:
        for _ in range(_BURST):
            try:
                frames = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            first = frames[0].bytes
            if first in self._latched:
                self._last[first] = [f.bytes for f in frames]
            self.backend.send_multipart(frames, copy=False)
            self.forwarded += 1

    def _forward_subscriptions(self) -> None:
        for _ in range(_BURST):
            try:
                event = self.backend.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.frontend.send(event)
            if event[:1] == b"\x01":
                prefix = event[1:]
                for topic, frames in self._last.items():
                    if topic.startswith(prefix):
                        self.backend.send_multipart(frames)

    def close(self) -> None:
        """Close both sockets without lingering."""
        self.frontend.close(linger=0)
        self.backend.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
