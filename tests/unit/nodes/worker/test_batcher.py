"""Dynamic batching: when a batch is due, what it holds, and the bounds on waiting."""

from __future__ import annotations

import pytest

from vigil.nodes.worker._batcher import Batcher

MS = 1_000_000


def batcher(max_batch: int = 4, delay_ms: int = 2, starve_ms: int = 100) -> Batcher[str]:
    return Batcher(max_batch=max_batch, delay_ns=delay_ms * MS, starve_ns=starve_ms * MS)


def items(batch: list) -> list[str]:
    return [w.item for w in batch]


def test_lone_request_is_due_exactly_when_the_delay_ends() -> None:
    """max_queue_delay bounds the wait: one request is due at arrival + delay, not before."""
    b = batcher(delay_ms=2)
    b.push("a", priority=0, now_ns=10 * MS)
    assert not b.due(12 * MS - 1)
    assert b.wait_ns(10 * MS) == 2 * MS
    assert b.due(12 * MS)
    assert b.wait_ns(13 * MS) == 0


def test_full_batch_is_due_at_once() -> None:
    """A queue holding max_batch requests is due without waiting for the delay."""
    b = batcher(max_batch=3, delay_ms=50)
    for name in "abc":
        b.push(name, priority=0, now_ns=0)
    assert b.due(0)
    assert b.wait_ns(0) == 0


def test_batches_larger_than_one_form_under_load() -> None:
    """Requests that arrive within the delay leave together, up to max_batch."""
    b = batcher(max_batch=4, delay_ms=2)
    for i, name in enumerate("abcdef"):
        b.push(name, priority=0, now_ns=i * 100_000)
    assert items(b.take(2 * MS)) == ["a", "b", "c", "d"]
    assert items(b.take(3 * MS)) == ["e", "f"]
    assert len(b) == 0


def test_higher_class_goes_first_fifo_within() -> None:
    """A batch takes the highest priority class first, and each class in arrival order."""
    b = batcher(max_batch=3)
    b.push("low1", priority=0, now_ns=0)
    b.push("high1", priority=5, now_ns=1)
    b.push("mid1", priority=2, now_ns=2)
    b.push("high2", priority=5, now_ns=3)
    b.push("low2", priority=0, now_ns=4)
    assert items(b.take(5)) == ["high1", "high2", "mid1"]
    assert items(b.take(6)) == ["low1", "low2"]


def test_starvation_is_bounded() -> None:
    """Under a steady stream of urgent requests, a low one that waited starve_ns goes next."""
    b = batcher(max_batch=1, starve_ms=100)
    b.push("low", priority=0, now_ns=0)
    now = 0
    served = []
    for i in range(20):
        now = i * 10 * MS
        b.push(f"high{i}", priority=7, now_ns=now)
        served.extend(items(b.take(now)))
    assert served.index("low") == 10  # taken at t = 100 ms, not after the stream
    assert "low" not in served[:10]


def test_starved_requests_go_oldest_first() -> None:
    """Several starved requests leave in arrival order, across classes."""
    b = batcher(max_batch=4, starve_ms=10)
    b.push("low-old", priority=0, now_ns=0)
    b.push("mid-old", priority=3, now_ns=1)
    b.push("high-new", priority=7, now_ns=20 * MS)
    assert items(b.take(20 * MS)) == ["low-old", "mid-old", "high-new"]


def test_take_keeps_one_frame_size_per_batch() -> None:
    """With a key, a batch holds only items like its first; the rest keep their place."""
    b: Batcher[tuple[str, int]] = Batcher(max_batch=4, delay_ns=0, starve_ns=10**12)
    for name, size in [("a", 1), ("b", 2), ("c", 1), ("d", 2)]:
        b.push((name, size), priority=0, now_ns=0)
    first = [w.item[0] for w in b.take(0, key=lambda item: item[1])]
    second = [w.item[0] for w in b.take(0, key=lambda item: item[1])]
    assert (first, second) == (["a", "c"], ["b", "d"])


def test_take_respects_limit_and_empty_queue() -> None:
    """take() returns at most `limit` items, and nothing from an empty queue."""
    b = batcher(max_batch=8)
    assert b.take(0) == []
    assert b.wait_ns(0) is None
    assert not b.due(10**12)
    for name in "abcde":
        b.push(name, priority=0, now_ns=0)
    assert items(b.take(0, limit=2)) == ["a", "b"]
    assert len(b) == 3


def test_drain_returns_everything() -> None:
    """drain() empties every class."""
    b = batcher()
    b.push("a", priority=1, now_ns=0)
    b.push("b", priority=0, now_ns=0)
    assert sorted(items(b.drain())) == ["a", "b"]
    assert len(b) == 0


def test_max_batch_must_be_positive() -> None:
    """A batcher that could never form a batch is refused."""
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(max_batch=0, delay_ns=0, starve_ns=0)


def test_no_wait_for_company_that_is_not_coming() -> None:
    """Once arrivals are further apart than the delay, a lone request is due at once; when
    they come close together again, it waits for company again."""
    b = batcher(delay_ms=2)
    for n in range(4):  # one request every 50 ms: a closed loop, a slow camera
        b.push(str(n), priority=0, now_ns=n * 50 * MS)
        assert b.due(n * 50 * MS) == (n > 0)  # the first arrival says nothing of the gap
        b.take(n * 50 * MS)
    start = 200 * MS
    for n in range(16):  # a burst: 0.1 ms apart
        b.push(f"burst{n}", priority=0, now_ns=start + n * MS // 10)
        b.take(start + n * MS // 10)
    b.push("lone", priority=0, now_ns=start + 2 * MS)
    assert not b.due(start + 2 * MS)
    assert b.due(start + 4 * MS)
