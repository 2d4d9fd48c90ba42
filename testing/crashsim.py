"""A simulated disk for power-loss tests: records every write and sync, rebuilds any cut point.

The store runs on `RecordingMedium` exactly as on an mmap'd file: every write lands in the live
image (the page cache, which a killed process leaves behind) and is appended to the operation
log. `power_cuts` replays the log the way a disk under a page cache behaves: a sync makes the
pages it covers durable; a page written since its last sync may or may not have reached the
disk when the power fails, in any order, or in part. At every cut (after each operation) it
yields the images a disk can hold from the unsynced pages: all of them landed, none, each one
lost alone or landed alone, an in-order prefix (a cut at a 4 KiB page boundary), each one torn
at 512-byte sectors, each one at its version before its last write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Final, Literal

import msgspec

from vigil.bus.ptp import ClockOffset, ClockSource

__all__ = [
    "PAGE",
    "SECTOR",
    "Op",
    "PowerCut",
    "RecordingMedium",
    "SimClock",
    "SimMonotonic",
    "power_cuts",
]


class Op(msgspec.Struct, frozen=True):
    """One recorded operation; `tag` is what the test's probe said when it was issued."""

    kind: Literal["write", "sync"]
    offset: int
    data: bytes
    length: int
    tag: tuple[int, ...] = ()


class PowerCut(msgspec.Struct, frozen=True):
    """A disk image as the power left it: operations `[0, index)` issued, unsynced pages
    treated as `variant` says."""

    index: int
    variant: str
    image: bytearray


PAGE: Final = 4096
SECTOR: Final = 512


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
    def initial(self) -> bytes:
        """The image the medium was opened on."""
        return self._initial

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
        if offset < 0 or offset + len(data) > len(self._live):
            raise ValueError(f"write of {len(data)} bytes at {offset} outside the medium")
        tag = self.probe() if self.probe is not None else ()
        self._live[offset : offset + len(data)] = data
        self.ops.append(Op("write", offset, bytes(data), len(data), tag))

    def sync(self, offset: int, length: int) -> None:
        """Record a sync; everything written before it in the pages it covers is durable once
        it returns."""
        tag = self.probe() if self.probe is not None else ()
        self.ops.append(Op("sync", offset, b"", length, tag))

    def close(self) -> None:
        """Nothing to release; idempotent."""
        self.closed = True


class _Disk:
    """Durable content, the page cache, and which pages of the cache are not yet durable."""

    def __init__(self, initial: bytes) -> None:
        self.durable = bytearray(initial)
        self.live = bytearray(initial)
        # Unsynced page -> its content before the last write that touched it (insertion order:
        # the order the pages were first dirtied, which is the order writeback would take).
        self.dirty: dict[int, bytes] = {}

    def apply(self, op: Op) -> None:
        if op.kind == "write":
            first = op.offset // PAGE
            last = (op.offset + op.length - 1) // PAGE
            for page in range(first, last + 1):
                self.dirty[page] = bytes(self.live[page * PAGE : (page + 1) * PAGE])
            self.live[op.offset : op.offset + op.length] = op.data
            return
        # msync covers whole pages, from the page holding `offset` to the end of the range.
        first = op.offset // PAGE
        last = (op.offset + max(op.length, 1) - 1) // PAGE
        for page in range(first, last + 1):
            if self.dirty.pop(page, None) is not None:
                self.durable[page * PAGE : (page + 1) * PAGE] = self.page(page)

    def page(self, page: int) -> bytes:
        return bytes(self.live[page * PAGE : (page + 1) * PAGE])

    def image(self, content: dict[int, bytes]) -> bytearray:
        """The durable image with `content` laid over some unsynced pages."""
        out = bytearray(self.durable)
        for page, data in content.items():
            out[page * PAGE : page * PAGE + len(data)] = data
        return out

    def variants(self) -> Iterator[tuple[str, dict[int, bytes]]]:
        """(name, unsynced pages that reached the disk, with the content they reached it with)."""
        pages = list(self.dirty)
        new = {p: self.page(p) for p in pages}
        yield "landed", new
        if not pages:
            return
        yield "lost", {}
        if len(pages) > 1:
            for p in pages:
                yield f"lost:{p}", {q: d for q, d in new.items() if q != p}
                yield f"only:{p}", {p: new[p]}
            for i in range(2, len(pages)):
                yield f"prefix:{i}", {q: new[q] for q in pages[:i]}
        for p in pages:
            old = bytes(self.durable[p * PAGE : (p + 1) * PAGE])
            changed = [
                s for s in range(0, PAGE, SECTOR) if new[p][s : s + SECTOR] != old[s : s + SECTOR]
            ]
            if len(changed) > 1:
                half = len(changed) // 2
                for name, landed in (("torn512", changed[:half]), ("torn512r", changed[half:])):
                    torn = bytearray(old)
                    for s in landed:
                        torn[s : s + SECTOR] = new[p][s : s + SECTOR]
                    yield f"{name}:{p}", {**new, p: bytes(torn)}
            previous = self.dirty[p]
            if previous != old and previous != new[p]:
                yield f"stale:{p}", {**new, p: previous}


def power_cuts(medium: RecordingMedium) -> Iterator[PowerCut]:
    """Every distinct image a power cut can leave, after every operation of `medium`'s log.

    Images identical to one already yielded for the same cut are left out.
    """
    disk = _Disk(medium.initial)
    for index in range(len(medium.ops) + 1):
        seen: set[bytes] = set()
        for name, content in disk.variants():
            image = disk.image(content)
            key = hashlib.blake2b(image, digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            yield PowerCut(index, name, image)
        if index < len(medium.ops):
            disk.apply(medium.ops[index])


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
