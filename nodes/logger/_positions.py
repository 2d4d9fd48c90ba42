"""The positions file: where each publisher's sequence stood, for gap detection across restarts.

A restarted logger loads it, so what was published while no logger ran is recorded as a gap
(LOG_GAP) instead of vanishing. It is a hint beside the store, not part of its durability (the
commit records are): a stale file makes a restart count as lost some messages that were sealed
before it, never hide a loss, as long as it names every publisher there was. So it is rewritten
at once when a publisher appeared since the last save, else at most once a second, and at stop:
rewriting it at every group commit cost as much as the commit's own syncs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from vigil.bus.pubsub import Subscriber

__all__ = ["SAVE_EVERY_NS", "PositionsFile"]

SAVE_EVERY_NS: Final = 1_000_000_000
_DECODER = msgspec.msgpack.Decoder(dict[str, list[tuple[str, int, int, int]]])


class PositionsFile:
    """Loads a subscriber's positions at start and saves them when due."""

    def __init__(self, path: Path, clock: Callable[[], int]) -> None:
        self.path = path
        self._clock = clock
        self._due = 0
        self._known = -1  # publishers (per topic) in the last saved file
        # Why the last save failed; empty once one succeeds.
        self.problem = ""

    def resume(self, sub: Subscriber) -> int:
        """Continue `sub`'s sequences from the saved positions; returns how many it loaded."""
        try:
            positions = _DECODER.decode(self.path.read_bytes())
        except FileNotFoundError:
            return 0
        except (msgspec.DecodeError, msgspec.ValidationError):
            return 0  # a torn positions file only costs gap detection across this restart
        sub.resume(positions)
        return sum(len(v) for v in positions.values())

    def save(self, sub: Subscriber, *, final: bool = False) -> bool:
        """Save `sub`'s positions when a publisher appeared since the last save, a second has
        passed, or `final`; returns whether it wrote. An OSError is kept in `problem`."""
        known = sum(len(stats.last_seq) for stats in sub.stats.values())
        now = self._clock()
        if not (final or known != self._known or now >= self._due):
            return False
        self._due = now + SAVE_EVERY_NS
        scratch = self.path.with_suffix(".tmp")
        try:
            scratch.write_bytes(msgspec.msgpack.encode(sub.positions()))
            os.replace(scratch, self.path)
        except OSError as exc:
            self.problem = f"positions file {self.path}: {exc}"
            return False
        self._known = known
        self.problem = ""
        return True
