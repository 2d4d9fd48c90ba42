"""The admission queue: priority classes, fair queuing across peers, fair shedding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vigil.nodes.ingest._fairqueue import FairQueue

pytestmark = pytest.mark.verifies("SR-RL-002")


@dataclass
class _Item:
    peer: str
    n: int
    priority: int = 0
    cost_ns: int = 1
    nbytes: int = 1
    pixels: int = 1
    queued: bool = False
    tag: int = 0


def _drain(queue: FairQueue) -> list[tuple[str, int]]:
    out = []
    while (item := queue.pop()) is not None:
        assert isinstance(item, _Item)
        out.append((item.peer, item.n))
    return out


def test_peers_of_a_class_are_served_in_turn() -> None:
    """A peer with a long backlog delays another peer's request by one of its own at most."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    for n in range(5):
        queue.push(_Item("flood", n))
    queue.push(_Item("calm", 0))
    queue.push(_Item("calm", 1))
    assert _drain(queue)[:4] == [("flood", 0), ("calm", 0), ("flood", 1), ("calm", 1)]


def test_higher_priority_classes_go_first() -> None:
    """Every request of a higher class is served before any of a lower one."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    queue.push(_Item("a", 0, priority=1))
    queue.push(_Item("b", 0, priority=5))
    queue.push(_Item("a", 1, priority=5))
    assert [peer for peer, _ in _drain(queue)] == ["b", "a", "a"]


def test_round_robin_is_by_work_not_by_count() -> None:
    """A peer of cheap requests gets several served for one expensive request of another."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    for n in range(3):
        queue.push(_Item("big", n, cost_ns=4))
    for n in range(12):
        queue.push(_Item("small", n, cost_ns=1))
    order = [peer for peer, _ in _drain(queue)]
    # By the big peer's second request (work 8), the small peer had 7 (work 7) served.
    assert order[:9].count("big") == 2 and order[:9].count("small") == 7


def test_discarded_requests_leave_the_sums_and_are_skipped() -> None:
    """A request that ended while queued frees its count and bytes at once and is never
    served."""
    queue = FairQueue(max_count=2, max_bytes=1000)
    first, second = _Item("a", 0, nbytes=10), _Item("a", 1, nbytes=20)
    queue.push(first)
    queue.push(second)
    assert not queue.fits(1)
    queue.discard(first)
    assert (queue.count, queue.bytes) == (1, 20)
    assert queue.fits(1)
    assert _drain(queue) == [("a", 1)]


def test_the_byte_limit_counts_bytes_held_elsewhere() -> None:
    """Bytes held for requests already at a worker count against the same limit."""
    queue = FairQueue(max_count=10, max_bytes=100)
    queue.push(_Item("a", 0, nbytes=40))
    assert queue.fits(60)
    assert not queue.fits(60, held_bytes=1)


def test_a_full_queue_sheds_the_heaviest_peer_of_the_same_class() -> None:
    """A new request of a peer holding little displaces the newest of the peer holding most."""
    queue = FairQueue(max_count=4, max_bytes=1000)
    flood = [_Item("flood", n) for n in range(4)]
    for item in flood:
        queue.push(item)
    assert queue.victims(0, "calm", 1, held_bytes=0) == [flood[-1]]


def test_a_full_queue_does_not_shed_for_its_heaviest_peer() -> None:
    """The peer that holds the most is refused itself: it cannot push others out."""
    queue = FairQueue(max_count=4, max_bytes=1000)
    for n in range(3):
        queue.push(_Item("flood", n))
    queue.push(_Item("calm", 0))
    assert queue.victims(0, "flood", 1, held_bytes=0) == []


def test_shedding_stops_at_an_even_share() -> None:
    """Within one class a peer is shed only while it would still hold more than the new
    request's peer."""
    queue = FairQueue(max_count=2, max_bytes=1000)
    queue.push(_Item("a", 0))
    queue.push(_Item("b", 0))
    assert queue.victims(0, "c", 1, held_bytes=0) == []


def test_many_small_requests_outweigh_one_large_when_count_is_short() -> None:
    """Backlogs compare by their share of the limits: a peer holding the whole count in
    small requests is shed for one large request of another, and not the other way round."""
    queue = FairQueue(max_count=4, max_bytes=10_000)
    flood = [_Item("flood", n, nbytes=10) for n in range(4)]
    for item in flood:
        queue.push(item)
    assert queue.victims(0, "calm", 2_000, held_bytes=0) == [flood[-1]]
    large = _Item("calm", 0, nbytes=2_000)
    queue.discard(flood[-1])
    queue.push(large)
    assert queue.victims(6, "probe", 10, held_bytes=0) == [flood[-2]]


def test_lower_classes_are_shed_before_any_fairness_question() -> None:
    """A higher-priority request sheds lower-class work, even of a peer holding little."""
    queue = FairQueue(max_count=2, max_bytes=1000)
    low = _Item("a", 0, priority=0)
    queue.push(low)
    queue.push(_Item("b", 0, priority=6))
    assert queue.victims(6, "b", 1, held_bytes=0) == [low]


def test_bytes_shed_as_much_as_a_large_request_needs() -> None:
    """Shedding for bytes takes as many of the heaviest peer's requests as it takes to fit."""
    queue = FairQueue(max_count=100, max_bytes=100)
    flood = [_Item("flood", n, nbytes=25) for n in range(4)]
    for item in flood:
        queue.push(item)
    assert queue.victims(0, "calm", 40, held_bytes=0) == [flood[3], flood[2]]


def test_work_ahead_counts_higher_classes_and_a_fair_share_of_its_own() -> None:
    """A light peer's request waits for higher classes and one turn of each rival, not for
    a rival's whole backlog."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    queue.push(_Item("urgent", 0, priority=7, cost_ns=5))
    for n in range(50):
        queue.push(_Item("flood", n, cost_ns=10))
    assert queue.work_ahead(0, "calm", 10) == 5 + 10
    assert queue.work_ahead(0, "flood", 10) == 5 + 500


def test_a_peer_back_from_idle_gets_no_credit_for_its_silence() -> None:
    """A peer idle while another was served starts at the class's clock, not at zero: it
    cannot jump ahead of everyone with work saved up."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    for n in range(6):
        queue.push(_Item("busy", n))
    served = [queue.pop(), queue.pop(), queue.pop()]
    assert [item.n for item in served if isinstance(item, _Item)] == [0, 1, 2]
    queue.push(_Item("back", 0))
    queue.push(_Item("back", 1))
    # The clock stands at busy 2's tag (2): back's first request starts there and goes next,
    # its second is tagged 3 and goes after busy 3, filed before it: turns alternate.
    assert _drain(queue) == [("back", 0), ("busy", 3), ("back", 1), ("busy", 4), ("busy", 5)]


def test_a_requeued_request_goes_first_in_its_peers_fifo() -> None:
    """Work re-dispatched after a worker was lost is served before the peer's newer work."""
    queue = FairQueue(max_count=10, max_bytes=1000)
    queue.push(_Item("a", 1))
    queue.push(_Item("a", 0), front=True)
    assert _drain(queue) == [("a", 0), ("a", 1)]


def test_requests_put_back_again_and_again_do_not_grow_the_queue() -> None:
    """Taking requests and putting them back at their heads, pass after pass, leaves the
    queue's index as small as it was and serves them in their order."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    for n in range(20):
        queue.push(_Item("ab"[n % 2], n))
    for _ in range(1000):
        taken = [queue.pop() for _ in range(16)]
        for item in reversed(taken):
            assert item is not None
            queue.push(item, front=True)
    assert len(queue._classes[0].heads) < 100  # the index is what could leak
    served = _drain(queue)
    assert [n for peer, n in served if peer == "a"] == list(range(0, 20, 2))
    assert [n for peer, n in served if peer == "b"] == list(range(1, 20, 2))


def test_a_large_request_does_not_wait_for_its_own_size() -> None:
    """A peer that had nothing queued is served after one request of a flooding peer, however
    much larger its own request is than theirs."""
    queue = FairQueue(max_count=1000, max_bytes=100_000)
    for n in range(200):
        queue.push(_Item("flood", n, cost_ns=1))
    assert queue.work_ahead(0, "calm", 100) == 1  # the flood's head, not 100 of its tail
    queue.push(_Item("calm", 0, cost_ns=100))
    assert _drain(queue)[:2] == [("flood", 0), ("calm", 0)]


def test_peers_to_skip_keep_their_places() -> None:
    """`pop(skip=...)` passes over the skipped peers' requests without taking them: the
    next pop without a skip serves them in their order."""
    queue = FairQueue(max_count=100, max_bytes=1000)
    for n in range(3):
        queue.push(_Item("flood", n))
    queue.push(_Item("calm", 0, cost_ns=50))
    item = queue.pop(skip={"flood"})
    assert isinstance(item, _Item) and (item.peer, item.n) == ("calm", 0)
    assert queue.pop(skip={"flood"}) is None
    assert _drain(queue) == [("flood", 0), ("flood", 1), ("flood", 2)]
