"""A simulated disk for power-loss tests: records every write and sync, rebuilds any cut point.

The store runs on `RecordingMedium` exactly as on an mmap'd file. Every write lands in the live
image and is appended to the operation log; `image_at(cut)` replays the log onto the image that
existed when the medium was opened, up to an operation, optionally tearing that operation (only
its first `torn` bytes land, which models a page written in part), so a test can open the store
on what the disk held had the power failed at that instant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import msgspec

from vigil.bus.ptp import ClockOffset, ClockSource

__all__ = ["Cut", "Op", "RecordingMedium", "SimClock", "SimMonotonic"]


class Op(msgspec.Struct, frozen=True):
    """One recorded operation; `tag` is what the test's probe said when it was issued."""

    kind: Literal["write", "sync"]
    offset: int
    data: bytes
    length: int
    tag: tuple[int, ...] = ()


class Cut(msgspec.Struct, frozen=True):
    """A power-loss point: operations `[0, index)` landed, then `torn` bytes of the next one."""

    index: int
    torn: int = 0


class RecordingMedium:
    """The `Medium` double: an in-memory disk that keeps its history."""

    def __init__(self, initial: bytes | bytearray) -> None:
        self._initial = bytes(initial)
        self._live = bytearray(initial)
        self.ops: list[Op] = []
        self.closed = False
        # Called as each operation is issued, e.g. to note the writer's committed sequence.
        self.probe: Callable[[], tuple[int, ...]] | None = None

    @property
    def size(self) -> int:
        """Bytes on the simulated disk."""
        return len(self._live)

    @property
    def image(self) -> bytearray:
        """The live content (what the writer's mapping shows)."""
        return self._live

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Apply and record a write (a copy: the caller may reuse its buffer)."""
        self._live[offset : offset + len(data)] = data
        tag = self.probe() if self.probe is not None else ()
        self.ops.append(Op("write", offset, bytes(data), len(data), tag))

    def sync(self, offset: int, length: int) -> None:
        """Record a sync; everything written before it is durable once it returns."""
        tag = self.probe() if self.probe is not None else ()
        self.ops.append(Op("sync", offset, b"", length, tag))

    def close(self) -> None:
        """Nothing to release; idempotent."""
        self.closed = True

    def cuts(self, page: int) -> Iterator[Cut]:
        """Every distinct power-loss point: before each operation, and inside each write.

        A write is torn at every page boundary it crosses and in the middle of each page it
        touches, so both whole-page and part-page tears are covered.
        """
        for index, op in enumerate(self.ops):
            yield Cut(index)
            if op.kind != "write":
                continue
            tears: set[int] = set()
            start = op.offset
            end = op.offset + op.length
            boundary = start - start % page
            while boundary < end:
                lo = max(boundary, start)
                hi = min(boundary + page, end)
                tears.add(lo + (hi - lo) // 2 - start)
                if hi < end:
                    tears.add(hi - start)
                boundary += page
            tears.discard(0)
            tears.discard(op.length)
            for torn in sorted(tears):
                yield Cut(index, torn)
        yield Cut(len(self.ops))

    def replay(self) -> Iterator[tuple[Cut, bytearray]]:
        """(cut, disk image at that cut) for every cut of `cuts`, built incrementally.

        The yielded image is a fresh copy the caller may keep or modify.
        """
        page = 4096
        disk = bytearray(self._initial)
        pending: dict[int, list[Cut]] = {}
        for cut in self.cuts(page):
            pending.setdefault(cut.index, []).append(cut)
        for index in range(len(self.ops) + 1):
            for cut in pending.get(index, ()):
                image = bytearray(disk)
                if cut.torn:
                    op = self.ops[index]
                    image[op.offset : op.offset + cut.torn] = op.data[: cut.torn]
                yield cut, image
            if index < len(self.ops):
                op = self.ops[index]
                if op.kind == "write":
                    disk[op.offset : op.offset + op.length] = op.data


class SimClock:
    """A stand-in PHC behind the store's `Clock` interface: deterministic, advancing `step_ns`."""

    def __init__(
        self,
        start_ns: int = 1_700_000_000_000_000_000,
        step_ns: int = 1_000,
        source: ClockSource = ClockSource.PHC,
    ) -> None:
        self.source = source
        self.device = "/dev/ptp-sim"
        self._now = start_ns
        self._step = step_ns

    def now_ns(self) -> int:
        """The next reading."""
        self._now += self._step
        return self._now

    def offset(self, samples: int = 5) -> ClockOffset:
        """A fixed 37 s TAI-UTC offset measured through the ioctl."""
        now = self._now
        return ClockOffset(
            clock_ns=now, system_ns=now - 37_000_000_000, offset_ns=37_000_000_000,
            delay_ns=500, method="ioctl",
        )  # fmt: skip


class SimMonotonic:
    """A monotonic clock for deterministic commit timing: each reading advances `step_ns`."""

    def __init__(self, step_ns: int = 1_000_000) -> None:
        self.now = 0
        self.step = step_ns

    def __call__(self) -> int:
        self.now += self.step
        return self.now
