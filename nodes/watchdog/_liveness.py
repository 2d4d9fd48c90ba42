"""Liveness: which nodes and topics arrive in time, and how much of the request path is alive.

Pure bookkeeping with time passed in (the watchdog node feeds it heartbeats, exits and topics
and acts on what it reports). Besides overdue and back, it answers the question the degraded
policy needs: what share of the request path's capacity is alive. Only workers carry capacity
(each an equal share), and the ingests only together (a client fails over from one to the
next): a fault off the request path — logger, loader, proxy, metrics, the launcher — leaves the
capacity whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vigil.nodes.contract import silent_bus_ns

__all__ = ["PROXY", "TOPIC_KIND", "Liveness", "Watched"]

TOPIC_KIND = "topic"
PROXY = "proxy"


@dataclass(slots=True)
class Watched:
    """A node's heartbeat or a topic that must arrive again by `due_ns`."""

    name: str
    kind: str
    timeout_ns: int
    due_ns: int
    pid: int = 0
    overdue: bool = False
    # Why it became overdue: "heartbeat missing", "exited (code -9)", "stale".
    why: str = ""


# implements: SR-DEG-001, SR-WDG-004
class Liveness:
    """Deadlines of every watched node and topic; overdue ones are faults until they return."""

    def __init__(self, own: str, default_timeout_ns: int, now_ns: int = 0) -> None:
        self.own = own
        self.default_timeout_ns = default_timeout_ns
        self.entries: dict[str, Watched] = {}
        self.last_any_ns = now_ns
        # How often the bus came back after a silence (what was published meanwhile is lost).
        self.bus_returns = 0
        self._heard = False

    def expect(self, names: Iterable[str], now_ns: int, *, kind: str = "") -> None:
        """Watch `names` from now on, before they were ever heard (the launch file's nodes)."""
        for name in names:
            if name != self.own and name not in self.entries:
                self.entries[name] = Watched(
                    name, kind, self.default_timeout_ns, now_ns + self.default_timeout_ns
                )

    def watch_topic(self, topic: str, timeout_ns: int, now_ns: int) -> None:
        """Watch a topic for staleness."""
        self.entries[topic] = Watched(topic, TOPIC_KIND, timeout_ns, now_ns + timeout_ns)

    def beat(self, name: str, kind: str, pid: int, timeout_ns: int, now_ns: int) -> bool:
        """A heartbeat (or a watched topic) arrived; True when it was overdue until now."""
        if kind != TOPIC_KIND:
            if now_ns - self.last_any_ns > self._silent_ns():
                self._bus_back(now_ns)
            self.last_any_ns = now_ns  # the bus carries beats
            self._heard = True
        if name == self.own:
            return False  # a watchdog that was stopped is not a fault of its own making
        entry = self.entries.get(name)
        if entry is None:
            self.entries[name] = Watched(name, kind, timeout_ns, now_ns + timeout_ns, pid)
            return False
        entry.kind = kind or entry.kind
        entry.timeout_ns = timeout_ns
        entry.due_ns = now_ns + timeout_ns
        if (
            entry.overdue
            and entry.pid
            and pid
            and pid == entry.pid
            and entry.why.startswith("exit")
        ):
            return False  # a straggler beat of the process that exited: still gone
        entry.pid = pid or entry.pid
        back, entry.overdue, entry.why = entry.overdue, False, ""
        return back

    def heard(self, topic: str, now_ns: int) -> bool:
        """A message on a watched topic arrived; True when it was stale until now."""
        entry = self.entries.get(topic)
        if entry is None or entry.kind != TOPIC_KIND:
            return False
        return self.beat(topic, TOPIC_KIND, 0, entry.timeout_ns, now_ns)

    def stopped(self, name: str) -> None:
        """A node stopped on purpose: no longer watched, and no longer part of the capacity."""
        self.entries.pop(name, None)

    def exited(self, name: str, pid: int, code: int) -> Watched | None:
        """The launcher saw the process exit: overdue at once (the entry, when newly so)."""
        entry = self.entries.get(name)
        if entry is None or (entry.pid and pid and entry.pid != pid) or entry.overdue:
            return None
        entry.overdue = True
        entry.why = f"exited (code {code})"
        return entry

    def overdue(self, now_ns: int) -> list[Watched]:
        """Entries past their deadline since the last call (each reported once).

        Every heartbeat travels through the bus proxy. While no beat at all (this watchdog's
        own included) arrived for a period and a half (`_silent_ns`), the bus is what is
        silent, not each node: nobody is judged by heartbeat then, and once the silence
        outlasts a heartbeat deadline the proxy (its entry, or one made for it) is overdue.
        The request path never crosses the proxy, so its capacity stays whole.
        """
        beating = [e for e in self.entries.values() if e.kind != TOPIC_KIND]
        period = self._period_ns()
        quiet = now_ns - self.last_any_ns
        silent = quiet > self._silent_ns()
        late = [
            e
            for e in self.entries.values()
            if not e.overdue and now_ns > e.due_ns and (e.kind == TOPIC_KIND or not silent)
        ]
        if beating and quiet > period * 5 // 2:
            proxy = self.entries.setdefault(
                PROXY, Watched(PROXY, PROXY, self.default_timeout_ns, now_ns)
            )
            if not proxy.overdue:
                late.append(proxy)
        for entry in late:
            entry.overdue = True
            entry.why = "stale" if entry.kind == TOPIC_KIND else "heartbeat missing"
        return late

    def _period_ns(self) -> int:
        """The shortest heartbeat period watched (a deadline is 2.5 periods)."""
        timeouts = [e.timeout_ns for e in self.entries.values() if e.kind != TOPIC_KIND]
        return min(timeouts, default=self.default_timeout_ns) * 2 // 5

    def _silent_ns(self) -> int:
        """How long the bus carries no beat before it counts as silent (`silent_bus_ns`)."""
        return silent_bus_ns(self._period_ns())

    def _bus_back(self, now_ns: int) -> None:
        """Beats arrive again after the bus was silent: nobody is late for that silence."""
        self.bus_returns += self._heard  # the first beats are no return
        for entry in self.entries.values():
            if not entry.overdue and entry.kind != TOPIC_KIND:
                entry.due_ns = max(entry.due_ns, now_ns + entry.timeout_ns)

    def forgive(self, lateness_ns: int) -> None:
        """Move every deadline `lateness_ns` later: time the watchdog itself could not watch
        (it was stopped, or the host did not run it) is held against nobody."""
        if lateness_ns <= 0:
            return
        self.last_any_ns += lateness_ns
        for entry in self.entries.values():
            if not entry.overdue:
                entry.due_ns += lateness_ns

    @property
    def active(self) -> bool:
        """Whether any fault is active (something overdue)."""
        return any(e.overdue for e in self.entries.values())

    def next_due_ns(self) -> int | None:
        """The earliest deadline of what is not overdue yet."""
        return min((e.due_ns for e in self.entries.values() if not e.overdue), default=None)

    def capacity(self) -> float:
        """The share of the request path's capacity that is alive (1.0 when nothing on it is
        down): live workers over known workers, and nothing at all when every ingest is down."""
        workers = [e for e in self.entries.values() if e.kind == "worker"]
        ingests = [e for e in self.entries.values() if e.kind == "ingest"]
        if ingests and all(e.overdue for e in ingests):
            return 0.0
        if not workers:
            return 1.0
        return sum(not e.overdue for e in workers) / len(workers)
