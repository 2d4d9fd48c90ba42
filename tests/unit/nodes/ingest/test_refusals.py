"""Refusal evidence: individual records up to a rate, then aggregates that lose no count."""

from __future__ import annotations

import pytest

from vigil.nodes.ingest._refusals import OTHER_PEERS, RefusalLog
from vigil.schemas import DiagCode, ErrorCode

pytestmark = pytest.mark.verifies("SR-LOG-003", "SR-ERR-002")


class _Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def _refuse(log: RefusalLog, peer: str, n: int) -> bool:
    return log.individual(
        peer, ErrorCode.RESOURCE_EXHAUSTED, DiagCode.RATE_LIMITED, trace_id=bytes([n % 256]) * 16
    )


def test_refusals_beyond_the_peer_burst_are_aggregated_with_first_and_last_trace() -> None:
    """The first refusals of a peer are sealed one by one; the rest become one aggregate
    naming their count and the first and last refused request's trace."""
    clock = _Clock()
    log = RefusalLog(clock=clock, peer_burst=3, peer_rate_per_s=1, interval_ns=10)
    sealed = [_refuse(log, "flood", n) for n in range(10)]
    assert sealed == [True] * 3 + [False] * 7
    clock.now = 10
    (aggregate,) = log.due()
    assert (aggregate.peer, aggregate.count) == ("flood", 7)
    assert aggregate.first_trace_id == bytes([3]) * 16
    assert aggregate.last_trace_id == bytes([9]) * 16
    assert log.due() == []


def test_one_flooding_peer_leaves_the_others_their_own_budget() -> None:
    """A peer that spent its budget does not spend another's."""
    log = RefusalLog(clock=_Clock(), peer_burst=2, burst=100)
    for n in range(20):
        _refuse(log, "flood", n)
    assert _refuse(log, "calm", 0)


def test_the_total_budget_bounds_every_peer_together() -> None:
    """Many peers together are still sealed individually at most `burst` times."""
    log = RefusalLog(clock=_Clock(), peer_burst=5, burst=8)
    sealed = sum(_refuse(log, f"p{n}", n) for n in range(40))
    assert sealed == 8


def test_aggregates_are_due_once_per_interval() -> None:
    """Aggregates wait for the interval; the budget refills with time."""
    clock = _Clock()
    log = RefusalLog(clock=clock, peer_burst=1, peer_rate_per_s=1, interval_ns=1_000_000_000)
    _refuse(log, "p", 0)
    _refuse(log, "p", 1)
    assert log.due() == []
    clock.now = 1_000_000_000
    assert [a.count for a in log.due()] == [1]
    assert _refuse(log, "p", 2)  # one token earned in that second


def test_aggregate_keys_are_bounded() -> None:
    """Past `max_keys` peers and reasons, further peers share one aggregate; no count is lost."""
    clock = _Clock()
    log = RefusalLog(clock=clock, burst=1, peer_burst=1, max_keys=2, interval_ns=1)
    _refuse(log, "first", 0)  # sealed: the only token
    for n in range(5):
        _refuse(log, f"p{n}", n)
    clock.now = 1
    counts = {a.peer: a.count for a in log.due()}
    assert counts == {"p0": 1, "p1": 1, OTHER_PEERS: 3}
    assert log.sealed + log.aggregated == 6


def test_the_audit_trail_gets_one_summary_an_interval() -> None:
    """The first refusal after a quiet spell is audited at once; the rest of a flood comes in
    one summary an interval, counting every refusal, from the first trace to the last."""
    clock = _Clock()
    log = RefusalLog(clock=clock, audit_interval_ns=60)
    _refuse(log, "flood", 1)
    first = log.audit_due()
    assert first is not None and first.count == 1
    for n in range(2, 500):
        _refuse(log, "flood", n)
    assert log.audit_due() is None
    clock.now = 60
    summary = log.audit_due()
    assert summary is not None
    assert (summary.count, summary.peers) == (498, {"flood"})
    assert summary.first_trace_id == bytes([2]) * 16
    assert summary.describe().startswith(f"{DiagCode.RATE_LIMITED} RESOURCE_EXHAUSTED x498")
