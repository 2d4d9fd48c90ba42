"""Links to redundant ingests: which is up, where each request went, what to re-send on a loss.

A client connects to every ingest of a launch, one DEALER each (a link), and sends to one of
them — the first that is up, and the same one for as long as it stays up (hot standby). Each
link runs ZMTP heartbeats, so an ingest that dies (its socket closes) or falls silent (no
answer to a PING within `HEARTBEAT_TIMEOUT_MS`: stopped, hung, its host gone) shows up as a
disconnect on the link's socket monitor. The requests that link held are then re-sent at once
on the next link that is up, under the same request id: an ingest or worker that has seen one
already de-duplicates it. `IMMEDIATE` keeps a link from queuing while it is not connected;
what cannot go anywhere waits here and goes as soon as a link comes up, or ends at its
deadline. `Failover` is the bookkeeping alone, with no I/O: the clients do the sending.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope

__all__ = [
    "HEARTBEAT_IVL_MS",
    "HEARTBEAT_TIMEOUT_MS",
    "LINK_EVENTS",
    "Failover",
    "Outstanding",
    "configure_link",
    "link_change",
]

# A silent ingest is given up after HEARTBEAT_TIMEOUT_MS without a PONG; the PING period
# sets how soon after falling silent that clock starts.
HEARTBEAT_IVL_MS = 100
HEARTBEAT_TIMEOUT_MS = 300
LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


def configure_link(sock: zmq.Socket[Any]) -> None:
    """Set a client DEALER up as a link: no linger, no queuing while down, heartbeats."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    # The peer drops the connection too when our PINGs stop (this client hung).
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


def link_change(frames: list[bytes]) -> bool | None:
    """What a monitor event says of its link: True up, False down, None neither."""
    event = parse_monitor_message(frames)["event"]
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return True
    if event == zmq.EVENT_DISCONNECTED:
        return False
    return None


@dataclass(slots=True)
class Outstanding:
    """A request sent (or waiting to be sent) and not answered yet."""

    seq: int
    envelope: Envelope
    parts: Sequence[bytes | memoryview]
    """The body and buffer frames, kept for a re-send (the buffers reference the caller's
    arrays, which this keeps alive)."""
    deadline: Deadline
    give_up: Deadline
    """The deadline plus a grace period: with no reply by then, the request ends locally."""
    link: int | None = None
    """The link it went on; None while it waits for one."""
    sends: int = 0
    inline: Callable[[], Sequence[bytes | memoryview]] | None = None
    """For a frame in the client's shared memory (`parts` carry only its descriptor): makes
    the frames that carry the pixels themselves, for a link to an ingest that cannot read
    the pool. None: `parts` go on every link."""
    slot: int | None = None
    """The client's shared-memory slot that holds the frame: lent until the request ends,
    however many copies of it went out."""


# implements: SR-RED-001
class Failover:
    """Which links are up, which one new requests take, which requests each link holds."""

    def __init__(
        self,
        links: int,
        *,
        max_waiting: int,
        ended: Callable[[Outstanding], None] | None = None,
    ) -> None:
        self.up = [False] * links
        self.current: int | None = None
        self.requests: dict[int, Outstanding] = {}
        self.max_waiting = max_waiting
        self.resent = 0
        # Every link loss (monotonic ns, link): when a client saw an ingest go.
        self.losses: list[tuple[int, int]] = []
        # Told once of each request as it leaves the record (answered or ended locally): the
        # one place a request's resources (its shared-memory slot) are given back.
        self._ended = ended

    def choose(self) -> int | None:
        """The link to send on: the current one while it is up, else the first that is."""
        if self.current is None or not self.up[self.current]:
            self.current = next((i for i, up in enumerate(self.up) if up), None)
        return self.current

    def waiting(self) -> list[Outstanding]:
        """Requests on no link, oldest first."""
        return sorted((r for r in self.requests.values() if r.link is None), key=lambda r: r.seq)

    def has_room(self) -> bool:
        """Whether one more request may wait for a link."""
        return sum(r.link is None for r in self.requests.values()) < self.max_waiting

    def went_up(self, link: int) -> list[Outstanding]:
        """A link completed its handshake; returns the requests to send now (if any)."""
        self.up[link] = True
        return self.waiting() if self.choose() is not None else []

    def went_down(self, link: int) -> list[Outstanding]:
        """A link was lost: what it held waits again; returns what to re-send now (if any)."""
        if self.up[link]:
            self.losses.append((time.monotonic_ns(), link))
        self.up[link] = False
        for request in self.requests.values():
            if request.link == link:
                request.link = None
        return self.waiting() if self.choose() is not None else []

    def sent(self, request: Outstanding, link: int) -> None:
        """`request` went out on `link`."""
        request.link = link
        request.sends += 1
        if request.sends > 1:
            self.resent += 1

    def add(self, request: Outstanding) -> None:
        """Track a new request (it waits until sent)."""
        self.requests[request.seq] = request

    def done(self, seq: int) -> Outstanding | None:
        """A reply arrived (or the request ended locally): stop tracking it."""
        request = self.requests.pop(seq, None)
        if request is not None and self._ended is not None:
            self._ended(request)
        return request

    def expired(self, now_ns: int) -> tuple[Outstanding, bool] | None:
        """One request that must end locally now, and whether it was ever sent.

        A request still waiting for a link ends at its deadline; one that went out ends at
        its deadline plus the grace period, if no reply came by then.
        """
        for request in self.requests.values():
            sent = request.link is not None
            if (request.give_up if sent else request.deadline).expired(now_ns):
                self.done(request.seq)
                return request, sent
        return None

    def next_expiry(self) -> Deadline | None:
        """The earliest time a request may have to end locally."""
        return min(
            (r.give_up if r.link is not None else r.deadline for r in self.requests.values()),
            default=None,
        )
