"""Background CPU priority for the inference of peers beyond their fair share.

The ingest marks a dispatch `background` when its peer has more queued behind it while other
peers are active (admission.md, Fair shares). Keeping a flood to its own worker is not enough
on a host with few cores: its batches still take CPU time from every other process, the other
peers' worker included. Run at a higher nice value, they get the cores only when nobody within
their share wants them, and the host stays work-conserving.

Only the engine call runs on the lowered thread. A thread cannot take back its priority once
lowered (that needs CAP_SYS_NICE), so it is a thread of its own, kept for the purpose; and
pre- and post-processing stay on the lane, which holds the GIL for them: a lowered thread that
holds the GIL would stall the node's loop (and its heartbeat) while it waits for a core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from vigil.bus.closing import Closing

__all__ = ["BackgroundRunner", "thread_nice"]

T = TypeVar("T")


def thread_nice() -> int:
    """The nice value of the calling thread (Linux schedules threads, not processes)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _lower(nice: int) -> None:
    tid = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))


class BackgroundRunner(Closing):
    """One thread at nice `nice` (or the process's own, if that is higher) that runs the
    calls handed to it, one at a time: background inference takes at most one core of this
    worker, however many lanes hand it batches."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="background", initializer=_lower, initargs=(nice,)
        )

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` run on the background thread; blocks the caller until it returns."""
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        """Let a call in progress finish, then stop the thread."""
        self._pool.shutdown(wait=True)
