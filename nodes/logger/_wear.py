"""Choose the page group the next write goes to: least-worn free group, else the oldest live one."""

from __future__ import annotations

import heapq
from collections import deque

__all__ = ["NoHealthyGroup", "WearLeveller"]

from vigil.errors import VigilError


class NoHealthyGroup(VigilError):
    """Fewer than two healthy groups remain, so the ring cannot turn."""


class WearLeveller:
    """The allocation policy of the ring, kept apart from I/O so it can be driven a million times.

    Free healthy groups are handed out least-worn first (ties to the lowest index). When none is
    free the oldest live group is reclaimed, which keeps the retained history one contiguous run
    ending at the newest entry; since reclaimed groups then come round in FIFO order, every
    healthy group is written equally often and the max/min wear ratio tends to 1.
    """

    def __init__(self, wear: list[int], epochs: list[int], bad: list[bool]) -> None:
        self.wear = list(wear)
        self.bad = list(bad)
        self.epochs = list(epochs)
        live = sorted((e, g) for g, e in enumerate(epochs) if e and not bad[g])  # oldest first
        self._live: deque[int] = deque(g for _, g in live)
        self._free: list[tuple[int, int]] = [
            (w, g) for g, w in enumerate(wear) if not bad[g] and not epochs[g]
        ]
        heapq.heapify(self._free)
        self.next_epoch = max(epochs, default=0) + 1

    @property
    def live(self) -> list[int]:
        """Live groups, oldest first."""
        return list(self._live)

    def peek(self) -> tuple[int, bool]:
        """(group the next write would take, whether taking it reclaims live data)."""
        if self._free:
            return self._free[0][1], False
        if len(self._live) < 2:
            raise NoHealthyGroup("no group can be reclaimed without losing the newest one")
        return self._live[0], True

    def take(self) -> tuple[int, int]:
        """Allocate the next group: (group, its new epoch); its wear goes up by one."""
        group, reclaim = self.peek()
        if reclaim:
            self._live.popleft()
        else:
            heapq.heappop(self._free)
        epoch = self.next_epoch
        self.next_epoch += 1
        self.wear[group] += 1
        self.epochs[group] = epoch
        self._live.append(group)
        return group, epoch

    def release(self, group: int) -> None:
        """Return a live group to the free pool (its data is no longer retained)."""
        self._live.remove(group)
        self.epochs[group] = 0
        heapq.heappush(self._free, (self.wear[group], group))

    def mark_bad(self, group: int) -> None:
        """Never hand this group out again."""
        if group in self._live:
            self._live.remove(group)
        self._free = [(w, g) for w, g in self._free if g != group]
        heapq.heapify(self._free)
        self.bad[group] = True
        self.epochs[group] = 0

    def wear_ratio(self) -> float:
        """max/min wear over healthy groups (1.0 when none has been written)."""
        healthy = [w for w, b in zip(self.wear, self.bad, strict=True) if not b]
        low = min(healthy, default=0)
        return 1.0 if low == 0 and max(healthy, default=0) == 0 else max(healthy) / max(low, 1)
