"""The launcher's view of its children's heartbeats: who is silent, who is hung.

Pure bookkeeping with time passed in. A child is *silent* once its heartbeat is 2.5 of its
periods late (the watchdog's rule) and *hung* once it is `hang_beats` periods late: the
launcher then kills it, and restarts it like any exit. The launcher reads the beats every
half period rather than waking for each (`read_every_ns`): a beat counts from when it is
read, so a silence is judged up to half a period later. Every heartbeat travels through the
proxy, so when nothing arrives from anyone the proxy is the one to blame, not every node at
once. Time the launcher itself did not run (it was stopped, or the host did not schedule it)
is forgiven to everybody.
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.nodes.contract import silent_bus_ns

__all__ = ["Beats", "Silence"]


@dataclass(slots=True)
class _Entry:
    period_ns: int
    hang_ns: int
    last_ns: int
    pid: int
    silent: bool = False


@dataclass(frozen=True, slots=True)
class Silence:
    """A child whose heartbeat stopped: since when, and whether it now counts as hung."""

    label: str
    pid: int
    silent_ns: int
    hung: bool


# implements: SR-SUP-004, SR-WDG-004
class Beats:
    """Heartbeat deadlines of the launcher's running children."""

    def __init__(self, proxy: str | None, now_ns: int = 0) -> None:
        self.proxy = proxy
        self._entries: dict[str, _Entry] = {}
        self.last_any_ns = now_ns

    def started(self, label: str, pid: int, period_ms: int, hang_beats: int, now_ns: int) -> None:
        """A child is ready: watch it from now (0 `hang_beats`: never judged hung)."""
        period = period_ms * 1_000_000
        self._entries[label] = _Entry(period, hang_beats * period, now_ns, pid)
        if label == self.proxy:
            self._bus_back(now_ns)  # a new bus: everyone's deadline starts now
        self.last_any_ns = max(self.last_any_ns, now_ns)

    def _bus_back(self, now_ns: int) -> None:
        """The bus carries beats again after a silence: nobody is late for that silence."""
        for entry in self._entries.values():
            entry.last_ns = max(entry.last_ns, now_ns)

    def gone(self, label: str) -> None:
        """A child exited or stops: no longer watched."""
        self._entries.pop(label, None)

    def beat(self, label: str, pid: int, now_ns: int, *, since_ns: int | None = None) -> bool:
        """A heartbeat from `label`, read at `now_ns`; True when it had been silent until now.

        `since_ns`: the beat arrived no earlier than this (the launcher reads the bus on a
        timer, so a beat is stamped when it is read). Only the time up to it is known to
        have been silent: a bus that carried nothing for longer than `silent_bus_ns` before it is
        back.
        """
        periods = [e.period_ns for e in self._entries.values()]
        arrived_after = now_ns if since_ns is None else since_ns
        if periods and arrived_after - self.last_any_ns > silent_bus_ns(min(periods)):
            self._bus_back(now_ns)
        self.last_any_ns = now_ns  # the bus carries beats
        entry = self._entries.get(label)
        if entry is None or entry.pid != pid:
            return False
        entry.last_ns = now_ns
        back, entry.silent = entry.silent, False
        return back

    def forgive(self, lateness_ns: int) -> None:
        """The launcher did not run for `lateness_ns` more than it meant to: nobody's fault."""
        if lateness_ns > 0:
            self.last_any_ns += lateness_ns
            for entry in self._entries.values():
                entry.last_ns += lateness_ns

    def check(self, now_ns: int) -> list[Silence]:
        """Children newly silent, and those now hung (each hung one reported until killed).

        While no heartbeat at all arrived for a period and a half (`silent_bus_ns`), only the
        proxy can be judged: nothing reaches the launcher because nothing passes the proxy.
        """
        if not self._entries:
            return []
        period = min(e.period_ns for e in self._entries.values())
        quiet = now_ns - self.last_any_ns > silent_bus_ns(period)
        found = []
        for label, entry in self._entries.items():
            if quiet and label != self.proxy:
                continue
            silent_ns = now_ns - (self.last_any_ns if quiet else entry.last_ns)
            if silent_ns <= entry.period_ns * 5 // 2:
                continue
            hung = entry.hang_ns > 0 and silent_ns > entry.hang_ns
            if hung or not entry.silent:
                found.append(Silence(label, entry.pid, silent_ns, hung))
            entry.silent = True
        return found

    def read_every_ns(self) -> int | None:
        """How often the bus must be read: half the shortest period watched (so a bus that
        carries beats never looks silent for a period between two reads), or None."""
        periods = [e.period_ns for e in self._entries.values()]
        return min(periods) // 2 if periods else None

    def next_due_ns(self) -> int | None:
        """When the next child would turn silent or hung, if nothing arrives."""
        dues = []
        for entry in self._entries.values():
            if not entry.silent:
                dues.append(entry.last_ns + entry.period_ns * 5 // 2 + 1)
            elif entry.hang_ns:
                dues.append(entry.last_ns + entry.hang_ns + 1)
        return min(dues, default=None)
