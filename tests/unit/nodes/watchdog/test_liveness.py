"""Liveness: heartbeats and exits become faults; the capacity counts only the request path."""

from __future__ import annotations

import pytest

from vigil.nodes.watchdog._liveness import PROXY, Liveness

pytestmark = pytest.mark.verifies("SR-WDG-001", "SR-DEG-001")

MS = 1_000_000
TIMEOUT = 250 * MS  # 2.5 periods of 100 ms


def _live(*nodes: tuple[str, str], now: int = 0) -> Liveness:
    live = Liveness("watchdog", TIMEOUT, now)
    for name, kind in nodes:
        live.beat(name, kind, 1, TIMEOUT, now)
    return live


def _keep_bus_alive(live: Liveness, now: int, *silent: str) -> None:
    """Every node but `silent` (and the watchdog itself) beats at `now`."""
    for name, entry in list(live.entries.items()):
        if name not in silent and entry.kind != "topic":
            live.beat(name, entry.kind, entry.pid, TIMEOUT, now)
    live.beat("watchdog", "watchdog", 9, TIMEOUT, now)


def test_a_node_past_its_deadline_is_overdue_once() -> None:
    """A heartbeat missing past its deadline is reported overdue, and only once."""
    live = _live(("worker.1", "worker"), ("logger", "logger"))
    for at in (50, 100, 150, 200, 250):
        _keep_bus_alive(live, at * MS, "worker.1")
    assert [e.name for e in live.overdue(260 * MS)] == ["worker.1"]
    assert live.overdue(270 * MS) == []
    assert live.active


def test_an_exit_is_a_fault_at_once() -> None:
    """The launcher's exit report makes a node overdue without waiting for its deadline."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"))
    entry = live.exited("worker.1", 1, -9)
    assert entry is not None and entry.why == "exited (code -9)"
    assert live.capacity() == 0.5


def test_a_restarted_node_is_back_with_its_new_pid() -> None:
    """A beat from the restarted process clears the fault; the dead one's last beat does not."""
    live = _live(("worker.1", "worker"))
    live.exited("worker.1", 1, -9)
    assert live.beat("worker.1", "worker", 1, TIMEOUT, 10 * MS) is False
    assert live.active
    assert live.beat("worker.1", "worker", 2, TIMEOUT, 20 * MS) is True
    assert not live.active


def test_capacity_counts_workers_only() -> None:
    """Losing a node off the request path leaves the capacity whole; a worker costs its share."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"), ("logger", "logger"))
    live.exited("logger", 1, -9)
    assert live.capacity() == 1.0
    live.exited("worker.2", 1, -9)
    assert live.capacity() == 0.5


def test_one_ingest_of_two_costs_no_capacity_both_cost_all() -> None:
    """Clients fail over between ingests: capacity goes only when every ingest is gone."""
    live = _live(("ingest", "ingest"), ("ingest-b", "ingest"), ("worker.1", "worker"))
    live.exited("ingest", 1, -9)
    assert live.capacity() == 1.0
    live.exited("ingest-b", 1, -9)
    assert live.capacity() == 0.0


def test_a_stopped_node_leaves_the_capacity() -> None:
    """A worker that stops on purpose is no longer counted."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"))
    live.stopped("worker.2")
    live.exited("worker.1", 1, -9)
    assert live.capacity() == 0.0


def test_the_watchdog_never_watches_itself() -> None:
    """The watchdog's own beats neither create an entry nor make it overdue."""
    live = _live()
    live.beat("watchdog", "watchdog", 1, TIMEOUT, 0)
    assert "watchdog" not in live.entries


def test_a_silent_bus_blames_the_proxy_not_every_node() -> None:
    """With no beat from anyone (the proxy carries them all), only the proxy is overdue."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"), ("logger", "logger"))
    found = live.overdue(300 * MS)
    assert [e.name for e in found] == [PROXY]
    assert live.capacity() == 1.0


def test_nobody_is_late_for_the_time_the_bus_was_silent() -> None:
    """When beats come again, every node's deadline starts over from then."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"))
    live.overdue(300 * MS)
    live.beat("worker.1", "worker", 1, TIMEOUT, 400 * MS)
    assert live.overdue(500 * MS) == []


def test_time_the_watchdog_did_not_run_is_forgiven() -> None:
    """A pause of the watchdog itself moves every deadline by as much."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"))
    live.forgive(1000 * MS)
    assert live.overdue(1100 * MS) == []


def test_beats_in_one_late_burst_a_period_do_not_hide_a_hung_node() -> None:
    """A host's nodes beat on the same ticks, so beats come in a burst once a period, some
    bursts 40 % of a period late: the gap before such a burst is no bus silence, and a hung
    node is still overdue 2.5 periods after its last beat."""
    live = _live(("worker.1", "worker"), ("worker.2", "worker"), ("logger", "logger"))
    found_at = None
    for now_ms in range(10, 1001, 10):
        burst = now_ms % 100 == (40 if (now_ms // 100) % 2 else 0)
        if burst:
            _keep_bus_alive(live, now_ms * MS, "worker.1")
        if any(e.name == "worker.1" for e in live.overdue(now_ms * MS)):
            found_at = now_ms
            break
    assert found_at == 260
    assert live.bus_returns == 0
