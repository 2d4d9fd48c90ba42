"""The launcher's heartbeat watch: silent after 2.5 periods, hung after its hang limit."""

from __future__ import annotations

import pytest

from vigil.launch._beats import Beats

pytestmark = pytest.mark.verifies("SR-SUP-004", "SR-WDG-004")

MS = 1_000_000


def _beats() -> Beats:
    beats = Beats("proxy", 0)
    for pid, label in enumerate(("proxy", "logger", "worker.1"), start=1):
        beats.started(label, pid, 100, 10, 0)
    return beats


def _others_beat(beats: Beats, until_ms: int, *silent: str) -> None:
    """Every child but `silent` beats every 50 ms up to `until_ms`."""
    for at in range(50, until_ms + 1, 50):
        for pid, label in enumerate(("proxy", "logger", "worker.1"), start=1):
            if label not in silent:
                beats.beat(label, pid, at * MS)


def test_a_child_is_silent_after_two_and_a_half_periods() -> None:
    """A child whose beats stop is reported silent once, not yet hung."""
    beats = _beats()
    _others_beat(beats, 300, "worker.1")
    found = beats.check(300 * MS)
    assert [(s.label, s.hung) for s in found] == [("worker.1", False)]
    assert beats.check(310 * MS) == []


def test_a_child_silent_past_its_hang_limit_is_hung() -> None:
    """Ten periods without a beat while others beat: hung (to be killed)."""
    beats = _beats()
    _others_beat(beats, 1050, "worker.1")
    assert [(s.label, s.hung) for s in beats.check(1050 * MS)] == [("worker.1", True)]


def test_a_silent_bus_is_the_proxys_fault() -> None:
    """With no beat from anyone, only the proxy is judged."""
    beats = _beats()
    assert [(s.label, s.hung) for s in beats.check(1050 * MS)] == [("proxy", True)]


def test_after_the_bus_was_down_nobody_is_late_for_it() -> None:
    """The first beat after a silence gives every child a fresh deadline."""
    beats = _beats()
    beats.check(400 * MS)
    beats.beat("proxy", 1, 2000 * MS)
    assert beats.check(2100 * MS) == []


def test_a_restarted_childs_old_pid_does_not_count() -> None:
    """A beat from a pid that is no longer the child's does not keep it alive."""
    beats = _beats()
    beats.started("worker.1", 99, 100, 10, 0)
    for at in range(50, 301, 50):
        beats.beat("proxy", 1, at * MS)
        beats.beat("logger", 2, at * MS)
        beats.beat("worker.1", 3, at * MS)
    assert [s.label for s in beats.check(300 * MS)] == ["worker.1"]


def test_time_the_launcher_did_not_run_is_forgiven() -> None:
    """A pause of the launcher itself moves every deadline by as much."""
    beats = _beats()
    beats.forgive(5000 * MS)
    assert beats.check(5100 * MS) == []


def test_no_hang_limit_never_kills() -> None:
    """`hang_beats: 0` reports silence but never a hang."""
    beats = Beats(None, 0)
    beats.started("worker.1", 1, 100, 0, 0)
    beats.started("logger", 2, 100, 0, 0)
    for at in range(50, 5001, 50):
        beats.beat("logger", 2, at * MS)
    assert [(s.label, s.hung) for s in beats.check(5000 * MS)] == [("worker.1", False)]


def test_beats_read_on_a_timer_do_not_make_the_bus_look_back_from_a_silence() -> None:
    """Beats read every half period (some reads find none, the host runs a read late): the
    time before the previous read is all that is known silent, so a hung child's deadline
    is never reset as if the whole bus had been down."""
    beats = _beats()
    assert beats.read_every_ns() == 50 * MS
    last_read = 0
    for read in range(55, 1101, 55):  # every half period, each read a little late
        if any(last_read < at <= read for at in range(100, read + 1, 100)):
            for pid, label in enumerate(("proxy", "logger"), start=1):
                beats.beat(label, pid, read * MS, since_ns=last_read * MS)
        last_read = read
    assert [(s.label, s.hung) for s in beats.check(1100 * MS)] == [("worker.1", True)]


def test_beats_in_one_late_burst_a_period_do_not_hide_a_hung_child() -> None:
    """Beats come in a burst once a period (a host's nodes beat on the same ticks), some
    bursts 60 % of a period late, read every half period: no read takes the gap before a
    late burst for the bus coming back, and the hung child is silent on time."""
    beats = _beats()
    last_read = 0
    silent_at = None
    for read in range(50, 1001, 50):
        bursts = [t + (60 if (t // 100) % 2 else 0) for t in range(100, 1001, 100)]
        if any(last_read < at <= read for at in bursts):
            for pid, label in enumerate(("proxy", "logger"), start=1):
                beats.beat(label, pid, read * MS, since_ns=last_read * MS)
        last_read = read
        if any(s.label == "worker.1" for s in beats.check(read * MS)):
            silent_at = read
            break
    assert silent_at == 300
