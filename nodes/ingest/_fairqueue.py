"""The admission queue: strict priority classes, and within a class a fair share per peer.

Each priority class keeps one FIFO per peer and serves them by start-time fair queuing
(Goyal, Vin and Cheng, 1996) over the estimated work of each request: a request's tag is where
its peer's work would start if every active peer were served at the same rate (where its
peer's previous request finishes, or the class's clock if the peer was idle), and the request
with the smallest tag goes next; the clock is the tag of the request served last. A peer that
floods only pushes its own tags into the future, and a peer of small frames gets as much work
done as a peer of large ones. Unlike finish tags, start tags do not make a request wait for
its own size: a request of a peer that had nothing queued is served after at most one
request of each other peer, however large it is and however small theirs are.
When the queue is full, what goes first is the newest request of the lowest class, from the
peer that holds the most.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

__all__ = ["FairQueue", "Queued", "uncount"]

PRIORITIES = 8
# Stale heap entries tolerated beyond the live ones before the heap is rebuilt.
_SLACK = 64


class Queued(Protocol):
    """What the queue needs to know of a request (it sets `queued` and `tag`)."""

    priority: int
    peer: str
    cost_ns: int
    nbytes: int
    pixels: int  # its frame's size, fixed while it is queued
    queued: bool
    tag: int


@dataclass(slots=True)
class _Class:
    """One priority class: a FIFO per active peer, their heads ordered by tag."""

    fifos: dict[str, deque[Queued]] = field(default_factory=dict)
    # (tag of a peer's head, filing order, peer). A peer has one live entry, the one `filed`
    # holds; any other is stale, dropped when reached or when stale ones outnumber the live
    # (requests put back at a FIFO's head again and again must not grow the heap).
    heads: list[tuple[int, int, str]] = field(default_factory=list)
    filed: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    finish: dict[str, int] = field(default_factory=dict)  # where a peer's newest request ends
    clock: int = 0  # the tag of the request served last
    order: Iterator[int] = field(default_factory=itertools.count)
    # Per peer, of its live queued requests: the estimated work, and the backlog (bytes, count).
    work: dict[str, int] = field(default_factory=dict)
    backlog: dict[str, tuple[int, int]] = field(default_factory=dict)
    total_work: int = 0

    def push(self, item: Queued, *, front: bool) -> None:
        peer = item.peer
        fifo = self.fifos.get(peer)
        if fifo is None:
            fifo = self.fifos[peer] = deque()
        if front:  # a re-dispatch: it goes next, before the peer's newer work
            item.tag = self.clock
            fifo.appendleft(item)
        else:
            item.tag = max(self.finish.get(peer, 0), self.clock)
            self.finish[peer] = item.tag + item.cost_ns
            fifo.append(item)
        if fifo[0] is item:
            self._file(peer, item.tag)
        self.work[peer] = self.work.get(peer, 0) + item.cost_ns
        held, count = self.backlog.get(peer, (0, 0))
        self.backlog[peer] = (held + item.nbytes, count + 1)
        self.total_work += item.cost_ns

    def _file(self, peer: str, tag: int) -> None:
        """File `peer` under the tag of its head; its earlier entry, if any, goes stale."""
        entry = self.filed[peer] = (tag, next(self.order), peer)
        if len(self.heads) >= 2 * len(self.filed) + _SLACK:
            self.heads = list(self.filed.values())
            heapq.heapify(self.heads)
        else:
            heapq.heappush(self.heads, entry)

    def forget(self, item: Queued) -> None:
        """Take a live item out of the sums (it stays in its FIFO until reached)."""
        held, count = self.backlog[item.peer]
        if count == 1:
            del self.backlog[item.peer], self.work[item.peer]
        else:
            self.backlog[item.peer] = (held - item.nbytes, count - 1)
            self.work[item.peer] -= item.cost_ns
        self.total_work -= item.cost_ns

    def _head(self, peer: str) -> Queued | None:
        """A peer's first live request; a peer with none leaves the class."""
        fifo = self.fifos.get(peer)
        while fifo and not fifo[0].queued:
            fifo.popleft()  # ended while queued (expired, shed): already forgotten
        if fifo:
            return fifo[0]
        self.fifos.pop(peer, None)
        self.filed.pop(peer, None)
        if self.finish.get(peer, 0) <= self.clock:
            self.finish.pop(peer, None)  # idle and caught up: nothing to remember
        return None

    def pop(self, skip: frozenset[str] | set[str] = frozenset()) -> Queued | None:
        aside: list[tuple[int, int, str]] = []  # live entries of peers in `skip`
        try:
            return self._pop(skip, aside)
        finally:
            for entry in aside:
                heapq.heappush(self.heads, entry)

    def _pop(
        self, skip: frozenset[str] | set[str], aside: list[tuple[int, int, str]]
    ) -> Queued | None:
        while self.heads:
            entry = heapq.heappop(self.heads)
            tag, _, peer = entry
            if self.filed.get(peer) != entry:
                continue  # stale: the peer was filed again since
            if peer in skip:
                aside.append(entry)
                continue
            head = self._head(peer)
            if head is None:
                continue
            if head.tag != tag:  # its head ended since: file it under the new head's tag
                self._file(peer, head.tag)
                continue
            fifo = self.fifos[peer]
            fifo.popleft()
            self.clock = max(self.clock, head.tag)
            following = self._head(peer)
            if following is not None:
                self._file(peer, following.tag)
            return head
        return None


_K = TypeVar("_K", int, str)


def uncount(counter: Counter[_K], key: _K) -> None:
    """One fewer of `key`, gone from `counter` at none (so its keys are those still counted)."""
    if counter[key] <= 1:
        del counter[key]
    else:
        counter[key] -= 1


# implements: SR-RL-002
class FairQueue:
    """Requests waiting for a worker, bounded in count and in bytes."""

    def __init__(self, *, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._classes = [_Class() for _ in range(PRIORITIES)]
        self.count = 0
        self.bytes = 0
        self.sizes: Counter[int] = Counter()  # queued requests per frame size (pixels)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Queued]:
        """The live requests in the order they would be served (as things stand)."""
        for cls in reversed(self._classes):
            live = [item for fifo in cls.fifos.values() for item in fifo if item.queued]
            yield from sorted(live, key=lambda item: item.tag)

    def fits(self, nbytes: int, *, held_bytes: int = 0) -> bool:
        """Whether one more request of `nbytes` fits (with `held_bytes` held elsewhere)."""
        return self.count < self.max_count and self.bytes + held_bytes + nbytes <= self.max_bytes

    def push(self, item: Queued, *, front: bool = False) -> None:
        """Queue a request (at the head of its peer's FIFO with `front`: a re-dispatch)."""
        item.queued = True
        self._classes[item.priority].push(item, front=front)
        self.count += 1
        self.bytes += item.nbytes
        self.sizes[item.pixels] += 1

    def pop(self, skip: frozenset[str] | set[str] = frozenset()) -> Queued | None:
        """The next request to serve: highest class first, the smallest tag within it; none
        of the peers in `skip` (they keep their places)."""
        for cls in reversed(self._classes):
            item = cls.pop(skip)
            if item is not None:
                self._leave(cls, item)
                return item
        return None

    def discard(self, item: Queued) -> None:
        """Take out a request that ended while queued (it is skipped when reached)."""
        if item.queued:
            self._leave(self._classes[item.priority], item)

    def _leave(self, cls: _Class, item: Queued) -> None:
        item.queued = False
        cls.forget(item)
        self.count -= 1
        self.bytes -= item.nbytes
        uncount(self.sizes, item.pixels)

    def backlogged(self, priority: int, peer: str) -> bool:
        """Whether `peer` has requests waiting in class `priority`."""
        return peer in self._classes[priority].backlog

    def work_ahead(self, priority: int, peer: str, cost_ns: int) -> int:
        """Work served before a new request of `peer` at `priority` (an estimate).

        Every higher class goes first; in its own class, each other peer gets about as much
        work done first as this peer has queued already, plus the request at its head.
        """
        ahead = sum(cls.total_work for cls in self._classes[priority + 1 :])
        cls = self._classes[priority]
        own = cls.work.get(peer, 0)
        others = cls.total_work - own
        rivals = [fifo for who, fifo in cls.fifos.items() if who != peer and fifo]
        heads = sum(fifo[0].cost_ns for fifo in rivals)
        return ahead + own + min(others, own * len(rivals) + heads)

    def victims(self, priority: int, peer: str, nbytes: int, held_bytes: int) -> list[Queued]:
        """What to shed so that a new request fits, or [] when it must be refused itself.

        Shedding follows priority, then fairness: lower classes lose their newest requests
        first, from the peer with the largest backlog; within the new request's own class a
        peer loses one only while its backlog stays larger than the new request's peer's.
        """
        chosen: list[Queued] = []
        count, used = self.count, self.bytes + held_bytes
        for level in range(priority + 1):
            for victim in self._candidates(level, peer if level == priority else None, nbytes):
                if count < self.max_count and used + nbytes <= self.max_bytes:
                    return chosen
                chosen.append(victim)
                count -= 1
                used -= victim.nbytes
        if count < self.max_count and used + nbytes <= self.max_bytes:
            return chosen
        return []

    def _candidates(self, level: int, rival: str | None, nbytes: int) -> Iterator[Queued]:
        """Victims in one class, newest first from the peer with the largest backlog; with a
        `rival` (the new request's peer, in its own class) only while that stays fair.

        A backlog is measured as the larger of its shares of the two limits, so a peer of many
        small requests and one of a few large ones compare by what they take from the queue.
        """
        cls = self._classes[level]
        backlog = dict(cls.backlog)
        skipped: dict[str, int] = {}
        if rival is not None:
            held, count = backlog.get(rival, (0, 0))
            backlog[rival] = (held + nbytes, count + 1)
        while True:
            live = [(self._share(b), p) for p, b in backlog.items() if b[1] > 0]
            if not live:
                return
            share, heaviest = max(live)
            if rival is not None and (heaviest == rival or share <= self._share(backlog[rival])):
                return
            victim = _nth_newest(cls.fifos.get(heaviest, deque()), skipped.get(heaviest, 0))
            if victim is None:
                backlog[heaviest] = (0, 0)
                continue
            skipped[heaviest] = skipped.get(heaviest, 0) + 1
            held, count = backlog[heaviest]
            backlog[heaviest] = (held - victim.nbytes, count - 1)
            yield victim

    def _share(self, backlog: tuple[int, int]) -> float:
        """The larger of a backlog's shares of the byte and the count limit."""
        held, count = backlog
        return max(held / self.max_bytes, count / self.max_count)


def _nth_newest(fifo: deque[Queued], n: int) -> Queued | None:
    """The n-th newest live item of a FIFO (0: the newest)."""
    for item in reversed(fifo):
        if item.queued:
            if n == 0:
                return item
            n -= 1
    return None
