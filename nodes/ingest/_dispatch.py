"""Load-balanced dispatch and in-flight tracking: every request ends once, and only once."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import zmq

from vigil.bus.deadline import Deadline
from vigil.bus.envelope import TraceContext
from vigil.nodes.ingest._fairqueue import FairQueue, uncount

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
    # For the request's evidence: the client's span, and when it was admitted and last
    # dispatched (the ingest's monotonic clock).
    parent: TraceContext | None = None
    admitted_ns: int = 0
    dispatched_ns: int = 0
    # The authenticated peer it came from (its fair share), its estimated work and its size.
    peer: str = ""
    cost_ns: int = 1
    nbytes: int = 0
    pixels: int = 0
    model: str = ""
    unpriced: bool = False  # its frame size had never been measured when it was admitted
    queued: bool = False
    tag: int = 0  # its place in its peer's fair share (set by the queue)
    # Dispatched while others were active in its class and its peer had more queued behind
    # it, or it was bulk: beyond a fair share, it runs at the worker's background priority.
    background: bool = False


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
    held: dict[int, int] = field(default_factory=dict)  # request id -> its frame's pixels
    owners: dict[int, str] = field(default_factory=dict)  # request id -> its peer
    inflight: set[int] = field(default_factory=set)
    # What `held` and `owners` hold, counted: frames per size and requests per peer. Read on
    # every dispatch decision, so they cost one entry per size or peer, not one per request.
    sizes: Counter[int] = field(default_factory=Counter)
    peers: Counter[str] = field(default_factory=Counter)
    name: str = ""
    suspect: bool = False
    pid: int = 0
    host: str = ""
    model: str = ""

    @property
    def credit(self) -> int:
        """How many more requests the worker can take now."""
        return self.capacity - len(self.held)

    def hold(self, rid: int, pixels: int, peer: str) -> None:
        """The worker is given request `rid` (a frame of `pixels`, from `peer`); again, when
        its work came back from it while it was silent and it took the request once more."""
        self.release(rid)
        self.held[rid] = pixels
        self.owners[rid] = peer
        self.inflight.add(rid)
        self.sizes[pixels] += 1
        self.peers[peer] += 1

    def release(self, rid: int) -> None:
        """The worker no longer holds request `rid` (answered, or ended without it)."""
        self.inflight.discard(rid)
        pixels = self.held.pop(rid, None)
        if pixels is not None:
            uncount(self.sizes, pixels)
        peer = self.owners.pop(rid, None)
        if peer is not None:
            uncount(self.peers, peer)

    def held_work_ns(self, price: Callable[[int], int]) -> int:
        """The work of what the worker holds, at today's `price` of a frame's pixels."""
        return sum(price(pixels) * count for pixels, count in self.sizes.items())

    def holds_for(self, peer: str) -> bool:
        """Whether it holds work of `peer`."""
        return peer in self.peers

    def other_peers(self, peer: str) -> int:
        """How many peers other than `peer` it holds work of."""
        return len(self.peers) - (peer in self.peers)

    def serves(self, model: str) -> bool:
        """Whether it serves requests naming `model` ("" names none: any model serves)."""
        return not model or not self.model or model == self.model


# Requests that cannot go to any worker now, passed over in one dispatch pass at most.
_MAX_SKIPPED = 16


def _guessing(slot: WorkerSlot, priced: Callable[[int], bool]) -> bool:
    """Whether a worker holds work of a frame size that has no price yet."""
    return any(not priced(pixels) for pixels in slot.sizes)


def _takes(
    slot: WorkerSlot,
    request: Request,
    price: Callable[[int], int] | None,
    hold_ns: int,
    spread: bool,
) -> bool:
    """Whether `slot` may be given `request` now (see `Dispatcher.assignments`); `spread`:
    whether the request's peer may take one more worker."""
    if not slot.serves(request.model) or (not spread and not slot.holds_for(request.peer)):
        return False
    return _has_room(slot, price, hold_ns, price(request.pixels) if price is not None else 0)


def _has_room(
    slot: WorkerSlot, price: Callable[[int], int] | None, hold_ns: int, cost_ns: int
) -> bool:
    """Whether `slot` has room now for a request costing `cost_ns`: credit, not suspect, and
    what it holds stays within `hold_ns` of work with it (an idle worker always has room)."""
    if slot.credit <= 0 or slot.suspect:
        return False
    if price is None or not hold_ns or not slot.held:
        return True
    return slot.held_work_ns(price) + cost_ns <= hold_ns


def _preference(slot: WorkerSlot, peer: str, shared: bool) -> tuple[int, int, int]:
    """How much `slot` suits a request of `peer` (larger: better): the most free credit;
    while several peers are active (`shared`), first a worker that already holds the peer's
    work, then one holding the fewest other peers' work, so peers keep to their own workers."""
    if not shared:
        return (0, 0, slot.credit)
    return (slot.holds_for(peer), -slot.other_peers(peer), slot.credit)


@dataclass(slots=True)
class _Yield:
    """When work beyond a peer's share waits for work within a share.

    While a request within its peer's share is in flight, requests beyond a share wait in
    the queue, so that the request runs on a host their serving does not load (on a small
    host every process of the pipeline shares the same cores). A hold lasts `limit_ns` at
    most and is followed by a free spell as long as it was: peers beyond their share keep
    at least half the time, however many peers within a share keep requests in flight.
    """

    limit_ns: int
    held_from: int | None = None
    free_from: int = 0

    def holding(self, busy: bool, now_ns: int) -> bool:
        """Whether to hold now, given whether work within a share is in flight (`busy`)."""
        if not self.limit_ns:
            return False
        if self.held_from is not None:
            if busy and now_ns - self.held_from < self.limit_ns:
                return True
            self.free_from = now_ns + (now_ns - self.held_from)
            self.held_from = None
            return False
        if busy and now_ns >= self.free_from:
            self.held_from = now_ns
            return True
        return False


# implements: SR-ERR-001
class Dispatcher:
    """Queues accepted requests and hands each to the worker with the most free credit.

    Workers ask for work (credit) instead of being pushed to round-robin, so an idle worker
    always gets the next request and a slow one is never buried. The queue is fair across
    peers (`FairQueue`) and bounded in count and in bytes; the bytes bound covers every open
    request the ingest holds, queued or handed to a worker. Work held by a worker that
    disconnects or falls silent is re-dispatched once; a second loss ends it with an error.
    """

    def __init__(
        self,
        *,
        max_queue: int,
        max_bytes: int = 1 << 62,
        max_attempts: int = 2,
        active_ns: int = 0,
        yield_ns: int = 0,
        bulk_ns: int = 0,
    ) -> None:
        self.max_attempts = max_attempts
        self.active_ns = active_ns
        # A request costing more than this (or of a size with no price yet) is bulk (0: none).
        self.bulk_ns = bulk_ns
        # In-flight requests within their peer's share (not `background`), and how long work
        # beyond a share waits for them (`_Yield`).
        self.foreground: set[int] = set()
        self.yielding = _Yield(yield_ns)
        # (peer, priority class) -> when a request of it was last admitted
        self.seen: dict[tuple[str, int], int] = {}
        self.open: dict[int, Request] = {}
        self.queue = FairQueue(max_count=max_queue, max_bytes=max_bytes)
        self.workers: dict[bytes, WorkerSlot] = {}
        self._deadlines: list[tuple[Deadline, int]] = []
        self._next_rid = 0
        self.redispatched = 0
        self.open_bytes = 0

    def new_rid(self) -> int:
        """A fresh request id (the envelope sequence number towards workers)."""
        self._next_rid += 1
        return self._next_rid

    @property
    def held_bytes(self) -> int:
        """Bytes of open requests handed to workers (kept for a re-dispatch)."""
        return self.open_bytes - self.queue.bytes

    def has_room(self, nbytes: int = 0) -> bool:
        """Whether the queue takes one more request of `nbytes`."""
        return self.queue.fits(nbytes, held_bytes=self.held_bytes)

    def victims(self, priority: int, peer: str, nbytes: int) -> list[Request]:
        """Queued requests to shed so that a new one fits ([] when it must be refused)."""
        found = self.queue.victims(priority, peer, nbytes, self.held_bytes)
        return [v for v in found if isinstance(v, Request)]

    def admit(self, request: Request) -> bool:
        """Queue a request; False when the queue is full (the caller answers for it)."""
        if not self.has_room(request.nbytes):
            return False
        self.open[request.rid] = request
        self.open_bytes += request.nbytes
        self.seen[request.peer, request.priority] = request.admitted_ns
        self.queue.push(request)
        heapq.heappush(self._deadlines, (request.deadline, request.rid))
        return True

    def live_workers(self) -> int:
        """Workers that take work now (they offered capacity and are not presumed hung)."""
        return sum(1 for w in self.workers.values() if w.capacity > 0 and not w.suspect)

    def held_work_ns(self, price: Callable[[int], int]) -> int:
        """The work that workers hold, at today's `price` of a frame's pixels."""
        return sum(w.held_work_ns(price) for w in self.workers.values() if not w.suspect)

    def models(self) -> set[str]:
        """The models that connected workers serve."""
        return {w.model for w in self.workers.values() if w.model}

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

    def active_peers(self, now_ns: int) -> dict[int, set[str]]:
        """Per priority class, the peers that had a request of that class admitted within
        `active_ns` (the others are forgotten)."""
        self.seen = {k: t for k, t in self.seen.items() if now_ns - t <= self.active_ns}
        active: dict[int, set[str]] = {}
        for peer, priority in self.seen:
            active.setdefault(priority, set()).add(peer)
        return active

    def spread_limit(self, peer: str, active: set[str]) -> int:
        """How many workers the work of `peer` may occupy: all live ones but one for each
        other active peer, and at least one."""
        return max(1, self.live_workers() - len(active - {peer}))

    def spread(self, peer: str) -> int:
        """How many workers hold work of `peer`."""
        return sum(1 for w in self.workers.values() if not w.suspect and w.holds_for(peer))

    def assignments(
        self,
        price: Callable[[int], int] | None = None,
        hold_ns: int = 0,
        priced: Callable[[int], bool] | None = None,
        now_ns: int = 0,
    ) -> Iterator[tuple[WorkerSlot, Request]]:
        """Pair queued requests, in fair order, with the least-loaded workers that serve them.

        With `price` and `hold_ns`, a worker that holds anything is given more only while
        what it holds stays within `hold_ns` of work: the rest waits here, where it is served
        fairly, not in a worker's queue behind a batch of someone else's large frames. With
        `priced`, work of a frame size that has no price yet goes one at a time to a worker,
        and to all workers but one at most: priced work always has a worker to go to. With
        `active_ns`, while other peers are active in its priority class a peer's work occupies
        at most all workers but one for each of them (`spread_limit`): a flood never holds
        every worker, so another peer's request finds one that runs nothing of the flood's,
        in its own process and on its own lanes. Classes are not kept apart this way: a
        higher class goes first anyway (the watchdog's periodic probe at the safety priority
        takes no worker from a client). A request whose peer still has work queued behind it
        while others are active in its class is marked `background`: a backlogged peer is one
        asking for more than its share, and its work yields the CPU to the others' (the
        sparse flows of fq_codel go first the same way): it runs at background priority, and
        while a request within a share is in flight (its peer's own last one included) it
        waits here (`_Yield`). So is a bulk request (`bulk`): one request can be more than a
        share on its own, as a packet longer than fq_codel's quantum makes its flow a bulk
        one. A request that cannot go anywhere now keeps its place; others may pass it. When it
        is the peer's share of workers that is full, or the yield that holds it, the rest of
        its peer's work is passed over where it waits, so a flood queued in front of another
        peer's request never uses up a pass before that request's turn.
        """
        skipped: list[Request] = []
        active = self.active_peers(now_ns) if self.active_ns else {}
        holding = self.yielding.holding(bool(self.foreground), now_ns)
        # Peers whose other queued requests are passed over where they wait this pass (not
        # popped one by one: they could use up the skips before another peer's turn): those
        # held by the yield, and those at their share of workers with those workers full.
        passed: set[str] = set()
        # Once no worker has room for the cheapest request queued, none fits anywhere: the
        # pass ends there, instead of popping and putting back the rest of the queue (under
        # a steady backlog, every pass would otherwise pass over `_MAX_SKIPPED` requests).
        sizes = self.queue.sizes
        cheapest_ns = min(map(price, sizes)) if price is not None and hold_ns and sizes else 0
        try:
            while self.queue.count and len(skipped) < _MAX_SKIPPED:
                if not any(
                    _has_room(w, price, hold_ns, cheapest_ns) for w in self.workers.values()
                ):
                    return
                request = self.queue.pop(skip=passed)
                if request is None:
                    return  # all that is queued waits for the hold to end
                assert isinstance(request, Request)
                guessed = priced is not None and not priced(request.pixels)
                if guessed and priced is not None and not self._room_for_guesses(priced):
                    skipped.append(request)
                    continue
                peer, rivals = request.peer, active.get(request.priority, set())
                shared = len(rivals) >= 2
                background = shared and (
                    self.queue.backlogged(request.priority, peer)
                    or self.bulk(request.pixels, price, priced)
                )
                if background and holding:
                    skipped.append(request)
                    passed.add(peer)
                    continue
                spread = not shared or self.spread(peer) < self.spread_limit(peer, rivals)
                slot = max(
                    (
                        w
                        for w in self.workers.values()
                        if _takes(w, request, price, hold_ns, spread)
                        and not (guessed and priced is not None and _guessing(w, priced))
                    ),
                    key=lambda w: _preference(w, peer, shared),
                    default=None,
                )
                if slot is None:
                    skipped.append(request)
                    if not spread:  # its workers are full: so they are for the rest of its work
                        passed.add(peer)
                    continue
                slot.hold(request.rid, request.pixels, request.peer)
                request.worker = slot.identity
                request.background = background
                if not background:
                    self.foreground.add(request.rid)
                    holding = self.yielding.holding(True, now_ns)
                request.attempts += 1
                yield slot, request
        finally:
            for request in reversed(skipped):  # back at the head of their FIFOs, in order
                self.queue.push(request, front=True)

    def bulk(
        self,
        pixels: int,
        price: Callable[[int], int] | None,
        priced: Callable[[int], bool] | None,
    ) -> bool:
        """Whether a request of `pixels` is more work than one request within a share may
        be: more than `bulk_ns` at its price, or of a size never measured (its price is a
        guess, the work may be any multiple of it). Before anything is measured nothing is
        bulk: every request is a guess then, and nothing would be within a share."""
        if not self.bulk_ns or price is None or priced is None:
            return False
        return not priced(pixels) or price(pixels) > self.bulk_ns

    def _room_for_guesses(self, priced: Callable[[int], bool]) -> bool:
        """Whether another worker may take work of a size that has no price yet."""
        guessing = sum(1 for w in self.workers.values() if _guessing(w, priced))
        return guessing < max(1, self.live_workers() - 1)

    def complete(self, identity: bytes, rid: int) -> Request | None:
        """A worker answered `rid`: its room grows back; the request, if still open."""
        slot = self.workers.get(identity)
        if slot is not None:
            slot.release(rid)
        return self._forget(self.open.pop(rid, None))

    def close(self, rid: int) -> Request | None:
        """End a request without a worker's answer (expired or refused)."""
        request = self._forget(self.open.pop(rid, None))
        if request is not None and request.worker is not None:
            slot = self.workers.get(request.worker)
            if slot is not None:
                slot.inflight.discard(rid)
        return request

    def _forget(self, request: Request | None) -> Request | None:
        """Release what an ended request held: its place in the queue and its bytes."""
        if request is not None:
            self.queue.discard(request)
            self.foreground.discard(request.rid)
            self.open_bytes -= request.nbytes
            request.frames = []
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
            self.foreground.discard(rid)
            if request.attempts >= self.max_attempts:
                ended = self._forget(self.open.pop(rid))
                assert ended is not None
                exhausted.append(ended)
            else:
                self.queue.push(request, front=True)
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
