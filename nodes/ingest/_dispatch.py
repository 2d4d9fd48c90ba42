"""Load-balanced dispatch and in-flight tracking: every request ends once, and only once."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from vigil.bus.deadline import Deadline
from vigil.bus.envelope import TraceContext

__all__ = ["Dispatcher", "Request", "WorkerSlot"]


@dataclass(slots=True)
class Request:
    """An accepted request the ingest still owes an answer."""

    rid: int
    client: bytes
    client_seq: int
    trace: TraceContext
    deadline: Deadline
    received_ns: int
    frames: list[zmq.Frame]
    stream_id: str
    frame_ts_us: int
    priority: int = 0
    tenant: str = ""
    request_id: bytes = b""  # the client's id for it, the same on every re-send
    attempts: int = 0
    worker: bytes | None = None
    # For the request's evidence: the client's span and name, and when it was admitted and
    # last dispatched (the ingest's monotonic clock).
    parent: TraceContext | None = None
    peer: str = ""
    admitted_ns: int = 0
    dispatched_ns: int = 0


@dataclass(slots=True)
class WorkerSlot:
    """What the ingest knows of one connected worker.

    `held` are the requests handed to it that it has not answered yet (it answers every one,
    with a result or an error); `inflight` are those of them still open and still its job.
    They differ once work is re-dispatched away from a silent worker, which still owes its
    answers and so still has that much less room.
    """

    identity: bytes
    last_heard_ns: int
    capacity: int = 0
    held: set[int] = field(default_factory=set)
    inflight: set[int] = field(default_factory=set)
    name: str = ""
    suspect: bool = False
    pid: int = 0
    host: str = ""

    @property
    def credit(self) -> int:
        """How many more requests the worker can take now."""
        return self.capacity - len(self.held)


# implements: SR-ERR-001
class Dispatcher:
    """Queues accepted requests and hands each to the worker with the most free credit.

    Workers ask for work (credit) instead of being pushed to round-robin, so an idle worker
    always gets the next request and a slow one is never buried. Work held by a worker that
    disconnects or falls silent is re-dispatched once; a second loss ends it with an error.
    """

    def __init__(self, *, max_queue: int, max_attempts: int = 2) -> None:
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.open: dict[int, Request] = {}
        self.queue: deque[int] = deque()
        self.workers: dict[bytes, WorkerSlot] = {}
        self._deadlines: list[tuple[Deadline, int]] = []
        self._next_rid = 0
        self.redispatched = 0

    def new_rid(self) -> int:
        """A fresh request id (the envelope sequence number towards workers)."""
        self._next_rid += 1
        return self._next_rid

    def has_room(self) -> bool:
        """Whether the queue takes one more request."""
        if len(self.queue) >= self.max_queue:
            # Ids of requests that ended while queued still sit in the deque: drop them first.
            self.queue = deque(rid for rid in self.queue if rid in self.open)
        return len(self.queue) < self.max_queue

    def admit(self, request: Request) -> bool:
        """Queue a request; False when the queue is full (the caller answers for it)."""
        if not self.has_room():
            return False
        self.open[request.rid] = request
        self.queue.append(request.rid)
        heapq.heappush(self._deadlines, (request.deadline, request.rid))
        return True

    def worker_seen(self, identity: bytes, now_ns: int, name: str = "") -> WorkerSlot:
        """The slot of a worker that just spoke (created on first contact)."""
        slot = self.workers.get(identity)
        if slot is None:
            slot = self.workers[identity] = WorkerSlot(identity, now_ns, name=name)
        slot.last_heard_ns = now_ns
        slot.suspect = False
        if name:
            slot.name = name
        return slot

    def assignments(self) -> Iterator[tuple[WorkerSlot, Request]]:
        """Pair queued requests with the least-loaded workers that have credit."""
        while self.queue:
            slot = max(
                (w for w in self.workers.values() if w.credit > 0 and not w.suspect),
                key=lambda w: w.credit,
                default=None,
            )
            if slot is None:
                return
            rid = self.queue.popleft()
            request = self.open.get(rid)
            if request is None:  # answered (expired) while queued
                continue
            slot.held.add(rid)
            slot.inflight.add(rid)
            request.worker = slot.identity
            request.attempts += 1
            yield slot, request

    def complete(self, identity: bytes, rid: int) -> Request | None:
        """A worker answered `rid`: its room grows back; the request, if still open."""
        slot = self.workers.get(identity)
        if slot is not None:
            slot.held.discard(rid)
            slot.inflight.discard(rid)
        return self.open.pop(rid, None)

    def close(self, rid: int) -> Request | None:
        """End a request without a worker's answer (expired or refused)."""
        request = self.open.pop(rid, None)
        if request is not None and request.worker is not None:
            slot = self.workers.get(request.worker)
            if slot is not None:
                slot.inflight.discard(rid)
        return request

    # implements: SR-DLN-002
    def worker_lost(self, identity: bytes) -> list[Request]:
        """Re-queue a lost worker's open work (front of the queue, oldest first).

        Returns the requests that already used their attempts: the caller fails them.
        """
        slot = self.workers.pop(identity, None)
        if slot is None:
            return []
        return self._requeue(slot)

    def same_process(self, slot: WorkerSlot) -> list[bytes]:
        """Other connections of the worker process behind `slot` (it reconnected)."""
        if not slot.pid:
            return []
        return [
            identity
            for identity, other in self.workers.items()
            if other is not slot and (other.pid, other.host) == (slot.pid, slot.host)
        ]

    def worker_silent(self, now_ns: int, silence_ns: int) -> list[tuple[WorkerSlot, list[Request]]]:
        """Workers holding work that have said nothing for `silence_ns` (hung): their work
        is re-queued and they get no more until they speak again."""
        found = []
        for slot in self.workers.values():
            if slot.inflight and not slot.suspect and now_ns - slot.last_heard_ns > silence_ns:
                slot.suspect = True
                found.append((slot, self._requeue(slot)))
        return found

    def _requeue(self, slot: WorkerSlot) -> list[Request]:
        exhausted = []
        for rid in sorted(slot.inflight, reverse=True):
            request = self.open.get(rid)
            if request is None:
                continue
            request.worker = None
            if request.attempts >= self.max_attempts:
                exhausted.append(self.open.pop(rid))
            else:
                self.queue.appendleft(rid)
                self.redispatched += 1
        slot.inflight.clear()
        return exhausted

    # implements: SR-DLN-001
    def expired(self, now_ns: int) -> list[Request]:
        """Open requests whose deadline has passed (removed; the caller answers them)."""
        out = []
        while self._deadlines and self._deadlines[0][0].expired(now_ns):
            _, rid = heapq.heappop(self._deadlines)
            request = self.close(rid)
            if request is not None:
                out.append(request)
        return out

    def next_deadline(self) -> Deadline | None:
        """The earliest deadline among requests that may still be open."""
        while self._deadlines and self._deadlines[0][1] not in self.open:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None
