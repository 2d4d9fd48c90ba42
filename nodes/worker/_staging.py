"""Staging areas taken in turn, so one batch is filled while another runs (double buffering).

A batch's input is staged (frames gathered and normalised) in a slot that the engine then
reads. With two lanes and two slots, one lane stages batch k+1 while batch k runs on the
other: on a GPU the host-to-device copy and the normalising kernel of one batch overlap the
previous batch's compute; on the CPU one batch's preprocessing overlaps the other's
inference. A slot is handed out again only once the batch that used it has let go of it and
its *fence* has signalled (a CUDA event on the GPU: the device may still be reading after the
host call returned), so a batch's input is never overwritten while it is read.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Fence", "StagingRing"]

S = TypeVar("S")
# Blocks until whatever still reads a slot is done with it (nothing, on the CPU path).
Fence = Callable[[], None]


class StagingRing(Generic[S]):
    """A fixed set of staging slots, each lent to one batch at a time, oldest-freed first."""

    def __init__(self, slots: list[S]) -> None:
        if not slots:
            raise ValueError("a staging ring needs at least one slot")
        self._slots = slots
        self._free: deque[int] = deque(range(len(slots)))
        self._fences: list[Fence | None] = [None] * len(slots)
        self._ready = threading.Condition()
        self.waits = 0  # times a batch had to wait for a slot (all were in use)

    def __len__(self) -> int:
        return len(self._slots)

    def acquire(self) -> tuple[int, S]:
        """The least recently freed slot, once its last user's fence has signalled."""
        with self._ready:
            if not self._free:
                self.waits += 1
            self._ready.wait_for(lambda: bool(self._free))
            index = self._free.popleft()
            fence, self._fences[index] = self._fences[index], None
        if fence is not None:
            fence()  # outside the lock: other slots stay available meanwhile
        return index, self._slots[index]

    def release(self, index: int, fence: Fence | None = None) -> None:
        """Give a slot back; `fence` blocks until its reader (a device) is done with it."""
        with self._ready:
            self._fences[index] = fence
            self._free.append(index)
            self._ready.notify()

    @contextlib.contextmanager
    def slot(self) -> Iterator[S]:
        """A slot for the duration of the block (released without a fence)."""
        index, slot = self.acquire()
        try:
            yield slot
        finally:
            self.release(index)
