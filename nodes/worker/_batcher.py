"""Dynamic batching: priority classes, FIFO within a class, a bounded wait and bounded starvation.

A pure object with time passed in: the worker's loop pushes requests as they arrive and asks,
whenever a lane is free, whether a batch is due and which requests it holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Batcher", "Waiting"]

T = TypeVar("T")

# Weight of the newest gap in the moving average of arrival gaps.
_GAP_WEIGHT = 0.25


@dataclass(slots=True, eq=False)  # identity: items may hold arrays
class Waiting(Generic[T]):
    """A queued item, when it arrived, and its priority class."""

    item: T
    arrived_ns: int
    priority: int
    order: int  # arrival order across classes (ties in time are common on a coarse clock)


class Batcher(Generic[T]):
    """Forms batches from priority classes.

    A batch is *due* when the queue holds a full batch or its oldest item has waited
    `delay_ns` (`max_queue_delay_us`): no item waits longer than that for company. Nor does
    it wait for company that is not coming: the batcher keeps a moving average of the gap
    between arrivals, and while that gap is longer than `delay_ns` (one request at a time,
    a closed loop, a slow camera), a batch is due at once. A batch is taken from the highest
    class first, FIFO within a class; an item that has waited `starve_ns` goes before every
    younger one whatever its class, so a steady stream of urgent work delays the rest by at
    most that much (beyond the time to run what is ahead).
    """

    def __init__(self, *, max_batch: int, delay_ns: int, starve_ns: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.delay_ns = delay_ns
        self.starve_ns = starve_ns
        self._classes: dict[int, deque[Waiting[T]]] = {}
        self._count = 0
        self._order = 0
        self.gap_ns: float | None = None  # moving average of the gap between arrivals
        self._last_arrival: int | None = None

    def __len__(self) -> int:
        return self._count

    def push(self, item: T, *, priority: int, now_ns: int) -> None:
        """Queue `item` in its priority class."""
        if self._last_arrival is not None:
            gap = max(0, now_ns - self._last_arrival)
            self.gap_ns = (
                gap if self.gap_ns is None else self.gap_ns + _GAP_WEIGHT * (gap - self.gap_ns)
            )
        self._last_arrival = now_ns
        self._order += 1
        queue = self._classes.get(priority)
        if queue is None:
            # Highest class first when iterating: classes are few, so keep them sorted.
            queue = self._classes[priority] = deque()
            self._classes = dict(sorted(self._classes.items(), reverse=True))
        queue.append(Waiting(item, now_ns, priority, self._order))
        self._count += 1

    def oldest_ns(self) -> int | None:
        """When the item that has waited longest arrived (None when empty)."""
        heads = [q[0].arrived_ns for q in self._classes.values() if q]
        return min(heads) if heads else None

    def company_expected(self) -> bool:
        """Whether another request is expected within the delay (the gap between arrivals
        is no longer than it; unknown before the second arrival: expected)."""
        return self.gap_ns is None or self.gap_ns <= self.delay_ns

    def due(self, now_ns: int) -> bool:
        """Whether a batch should run now: a full one is queued, the oldest waited enough, or
        no company is expected."""
        wait = self.wait_ns(now_ns)
        return wait is not None and wait == 0

    def wait_ns(self, now_ns: int) -> int | None:
        """How long until a batch is due (0: now; None: nothing queued)."""
        oldest = self.oldest_ns()
        if oldest is None:
            return None
        if self._count >= self.max_batch or not self.company_expected():
            return 0
        return max(0, oldest + self.delay_ns - now_ns)

    def take(
        self,
        now_ns: int,
        limit: int | None = None,
        key: Callable[[T], Hashable] | None = None,
    ) -> list[Waiting[T]]:
        """Remove and return up to `limit` (default `max_batch`) items in service order.

        With `key`, a batch holds only items whose key equals the first one's (frames of one
        size); the others keep their place.
        """
        limit = self.max_batch if limit is None else min(limit, self.max_batch)
        batch: list[Waiting[T]] = []
        want: Hashable | None = None
        for waiting in self._service_order(now_ns):
            if len(batch) >= limit:
                break
            if key is not None:
                k = key(waiting.item)
                if batch and k != want:
                    continue
                want = k
            batch.append(waiting)
        for waiting in batch:
            self._classes[waiting.priority].remove(waiting)
        self._count -= len(batch)
        return batch

    def drain(self) -> list[Waiting[T]]:
        """Remove and return everything queued (service order ignored)."""
        out = [w for q in self._classes.values() for w in q]
        for q in self._classes.values():
            q.clear()
        self._count = 0
        return out

    def _service_order(self, now_ns: int) -> Iterator[Waiting[T]]:
        """Starved items (oldest first), then each class from the highest, FIFO within."""
        since = now_ns - self.starve_ns
        starved = sorted(
            (w for q in self._classes.values() for w in q if w.arrived_ns <= since),
            key=lambda w: w.order,
        )
        yield from starved
        seen = {id(w) for w in starved}
        for queue in self._classes.values():
            for waiting in queue:
                if id(waiting) not in seen:
                    yield waiting
