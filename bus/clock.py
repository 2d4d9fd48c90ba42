"""The wall clock every vigil process reads, with a step that fault injection can apply.

Wall time crosses processes and hosts (envelope stamps, deadlines on the wire), so a step of
the system clock (NTP, PTP, an operator) reaches every reader at once. To test that, a launch
for fault injection names an offset file: every process that reads wall time through
`wall_ns()` adds the offset it holds, and `step()` moves it for all of them at the same
instant, as a real step would. Without an offset file `wall_ns()` is `time.time_ns()`.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

__all__ = ["step", "to_next_tick", "use_offset_file", "wall_ns"]

_OFFSET = struct.Struct("<q")
_shared: mmap.mmap | None = None


def to_next_tick(period_s: float, now_ns: int | None = None) -> float:
    """Seconds from `now_ns` (the monotonic clock's reading by default) until the next whole
    multiple of `period_s`: a full period when `now_ns` is one.

    Periodic senders that wait for it instead of a plain `period_s` line up: every process
    on a host shares the clock, so their messages arrive together and each reader (the proxy,
    a subscriber's I/O thread) wakes once per period for all of them, not once per sender.
    """
    period_ns = max(1, round(period_s * 1e9))
    now = time.monotonic_ns() if now_ns is None else now_ns
    return (period_ns - now % period_ns) / 1e9


# implements: SR-TIM-002
def wall_ns() -> int:
    """Nanoseconds since the epoch on this host's wall clock (plus an injected step)."""
    if _shared is None:
        return time.time_ns()
    offset: int = _OFFSET.unpack_from(_shared)[0]
    return time.time_ns() + offset


def use_offset_file(path: str | os.PathLike[str] | None) -> None:
    """Read wall time with the offset held in `path` from now on (created as 0 if absent);
    None reads the system clock alone again."""
    global _shared  # noqa: PLW0603 - one wall clock per process
    if path is None:
        _shared = None
        return
    file = Path(path)
    if not file.exists():
        file.write_bytes(_OFFSET.pack(0))
    with open(file, "r+b") as fh:
        _shared = mmap.mmap(fh.fileno(), _OFFSET.size)


def step(path: str | os.PathLike[str], delta_ns: int) -> None:
    """Step the wall clock of every process reading `path` by `delta_ns` (a fault)."""
    file = Path(path)
    if not file.exists():
        file.write_bytes(_OFFSET.pack(0))
    with open(file, "r+b") as fh, mmap.mmap(fh.fileno(), _OFFSET.size) as shared:
        # One aligned 8-byte store, read by every process at its next wall-clock reading.
        _OFFSET.pack_into(shared, 0, _OFFSET.unpack_from(shared)[0] + delta_ns)
