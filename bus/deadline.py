"""Deadlines: wall clock on the wire, this process's monotonic clock inside, converted once.

A request's deadline crosses processes (client → ingest → worker) and hosts, where only the
wall clock is shared: the envelope carries it as `deadline_wall_ns`. Inside a process a wall
deadline would move with every clock step (NTP, PTP), so each hop converts it once, on
arrival, into a `Deadline` on the monotonic clock, and back to wall time only when it sends it
on. Nothing here reads a clock: callers pass the readings, so tests choose them.
"""

from __future__ import annotations

import msgspec

__all__ = ["Deadline"]


class Deadline(msgspec.Struct, frozen=True, order=True):
    """A point on this process's monotonic clock (`due_mono_ns`) by which work must end."""

    due_mono_ns: int

    @classmethod
    def after(cls, budget_ns: int, now_mono_ns: int) -> Deadline:
        """The deadline `budget_ns` from now."""
        return cls(now_mono_ns + budget_ns)

    @classmethod
    def from_wall(cls, deadline_wall_ns: int, *, now_wall_ns: int, now_mono_ns: int) -> Deadline:
        """The deadline a wall-clock time stands for, given both clocks read now."""
        return cls(now_mono_ns + (deadline_wall_ns - now_wall_ns))

    def remaining_ns(self, now_mono_ns: int) -> int:
        """Time left until the deadline (negative once it passed)."""
        return self.due_mono_ns - now_mono_ns

    def expired(self, now_mono_ns: int) -> bool:
        """Whether the deadline has come (a deadline due exactly now has)."""
        return now_mono_ns >= self.due_mono_ns

    def later(self, by_ns: int) -> Deadline:
        """The same deadline moved `by_ns` later (a grace period)."""
        return Deadline(self.due_mono_ns + by_ns)

    def to_wall_ns(self, *, now_wall_ns: int, now_mono_ns: int) -> int:
        """The wall-clock time of this deadline, for the wire, given both clocks read now."""
        return self.due_mono_ns - now_mono_ns + now_wall_ns
