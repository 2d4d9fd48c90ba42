"""Credit-based dispatch: assignment, credit accounting, re-dispatch, silence and expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.bus.deadline import Deadline
from vigil.bus.envelope import TraceContext
from vigil.nodes.ingest._dispatch import Dispatcher, Request, WorkerSlot

pytestmark = pytest.mark.verifies("SR-ERR-001", "SR-DLN-001", "SR-DLN-002")

TRACE = TraceContext(bytes(range(1, 17)), bytes(range(1, 9)))


def _request(dispatcher: Dispatcher, due_ns: int = 1_000, pixels: int = 0) -> Request:
    return Request(
        rid=dispatcher.new_rid(),
        client=b"client",
        client_seq=1,
        trace=TRACE,
        deadline=Deadline(due_ns),
        received_ns=0,
        frames=[],
        stream_id="cam-1",
        frame_ts_us=1,
        pixels=pixels,
    )


def _admitted(
    dispatcher: Dispatcher, count: int, due_ns: int = 1_000, pixels: int = 0
) -> list[Request]:
    requests = [_request(dispatcher, due_ns, pixels) for _ in range(count)]
    for request in requests:
        assert dispatcher.admit(request)
    return requests


def _worker(dispatcher: Dispatcher, identity: bytes, credit: int, now_ns: int = 0) -> None:
    dispatcher.worker_seen(identity, now_ns, name=identity.decode()).capacity = credit


def _assign(dispatcher: Dispatcher) -> list[tuple[bytes, int]]:
    return [(slot.identity, request.rid) for slot, request in dispatcher.assignments()]


def test_request_ids_increase() -> None:
    """Request ids start at 1 and increase by one."""
    dispatcher = Dispatcher(max_queue=4)
    assert [dispatcher.new_rid() for _ in range(3)] == [1, 2, 3]


def test_admit_refuses_beyond_the_queue_limit() -> None:
    """The queue holds at most max_queue requests; admit says False beyond."""
    dispatcher = Dispatcher(max_queue=2)
    _admitted(dispatcher, 2)
    extra = _request(dispatcher)
    assert not dispatcher.admit(extra)
    assert extra.rid not in dispatcher.open


def test_has_room_counts_only_requests_still_queued() -> None:
    """A full queue has no room; once its requests ended, the room is back."""
    dispatcher = Dispatcher(max_queue=2)
    assert dispatcher.has_room()
    _admitted(dispatcher, 2, due_ns=10)
    assert not dispatcher.has_room()
    dispatcher.expired(10)
    assert dispatcher.has_room()


def test_no_assignment_without_credit() -> None:
    """Requests stay queued while no worker has credit."""
    dispatcher = Dispatcher(max_queue=4)
    _admitted(dispatcher, 2)
    _worker(dispatcher, b"w1", 0)
    assert _assign(dispatcher) == []
    assert [r.rid for r in dispatcher.queue] == [1, 2]


def test_most_credit_gets_the_next_request() -> None:
    """Each request goes to the worker with the most free credit at that moment."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 4)
    _worker(dispatcher, b"w1", 1)
    _worker(dispatcher, b"w2", 3)
    assert _assign(dispatcher) == [(b"w2", 1), (b"w2", 2), (b"w1", 3), (b"w2", 4)]


def test_assignment_stops_when_credit_runs_out() -> None:
    """Once all credit is used the rest of the queue waits, in order."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 3)
    _worker(dispatcher, b"w1", 2)
    assert [rid for _, rid in _assign(dispatcher)] == [1, 2]
    assert [r.rid for r in dispatcher.queue] == [3]


def test_assignment_takes_credit_and_records_inflight() -> None:
    """An assignment uses one credit, marks the request in flight and counts an attempt."""
    dispatcher = Dispatcher(max_queue=4)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 2)
    _assign(dispatcher)
    slot = dispatcher.workers[b"w1"]
    assert (slot.credit, slot.inflight) == (1, {request.rid})
    assert (request.worker, request.attempts) == (b"w1", 1)


def test_complete_returns_credit_and_the_request() -> None:
    """A worker's answer returns its credit and ends the request once."""
    dispatcher = Dispatcher(max_queue=4)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    assert dispatcher.complete(b"w1", request.rid) is request
    slot = dispatcher.workers[b"w1"]
    assert (slot.credit, slot.inflight) == (1, set())
    assert request.rid not in dispatcher.open
    assert dispatcher.complete(b"w1", request.rid) is None


def test_suspect_worker_gets_no_work() -> None:
    """A worker marked suspect is skipped even with credit."""
    dispatcher = Dispatcher(max_queue=4)
    _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 5)
    dispatcher.workers[b"w1"].suspect = True
    assert _assign(dispatcher) == []


def test_worker_seen_clears_suspicion_and_keeps_the_name() -> None:
    """A worker that speaks again is trusted again; an empty name keeps the old one."""
    dispatcher = Dispatcher(max_queue=4)
    _worker(dispatcher, b"w1", 0)
    dispatcher.workers[b"w1"].suspect = True
    slot = dispatcher.worker_seen(b"w1", 77)
    assert (slot.suspect, slot.last_heard_ns, slot.name) == (False, 77, "w1")


def test_lost_worker_work_is_redispatched_once() -> None:
    """A lost worker's requests go to the front of the queue and to another worker."""
    dispatcher = Dispatcher(max_queue=8)
    first, second, queued = _admitted(dispatcher, 3)
    _worker(dispatcher, b"w1", 2)
    _assign(dispatcher)
    assert dispatcher.worker_lost(b"w1") == []
    assert b"w1" not in dispatcher.workers
    assert [r.rid for r in dispatcher.queue] == [first.rid, second.rid, queued.rid]
    assert (first.worker, dispatcher.redispatched) == (None, 2)
    _worker(dispatcher, b"w2", 3)
    assert _assign(dispatcher) == [(b"w2", first.rid), (b"w2", second.rid), (b"w2", queued.rid)]
    assert (first.attempts, queued.attempts) == (2, 1)


def test_second_loss_exhausts_the_request() -> None:
    """A request lost with a second worker is returned to the caller and no longer open."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    assert dispatcher.worker_lost(b"w1") == []
    _worker(dispatcher, b"w2", 1)
    _assign(dispatcher)
    assert dispatcher.worker_lost(b"w2") == [request]
    assert request.rid not in dispatcher.open
    assert [r.rid for r in dispatcher.queue] == []
    assert dispatcher.redispatched == 1


def test_single_attempt_exhausts_on_first_loss() -> None:
    """With max_attempts=1 nothing is re-dispatched."""
    dispatcher = Dispatcher(max_queue=8, max_attempts=1)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    assert dispatcher.worker_lost(b"w1") == [request]


def test_losing_an_unknown_worker_is_a_no_op() -> None:
    """worker_lost of an identity never seen returns nothing."""
    assert Dispatcher(max_queue=1).worker_lost(b"ghost") == []


def test_lost_worker_skips_already_answered_work() -> None:
    """Requests a lost worker held but that already ended are not re-queued."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    dispatcher.close(request.rid)
    dispatcher.workers[b"w1"].inflight.add(request.rid)  # a stale entry
    assert dispatcher.worker_lost(b"w1") == []
    assert [r.rid for r in dispatcher.queue] == []


def test_silent_worker_loses_its_work() -> None:
    """A worker holding work and silent past the limit is suspect and its work re-queued."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1, now_ns=100)
    _assign(dispatcher)
    found = dispatcher.worker_silent(now_ns=1_101, silence_ns=1_000)
    assert [(slot.identity, exhausted) for slot, exhausted in found] == [(b"w1", [])]
    slot = dispatcher.workers[b"w1"]
    assert (slot.suspect, slot.credit, slot.inflight) == (True, 0, set())
    assert [r.rid for r in dispatcher.queue] == [request.rid]


def test_silence_at_the_limit_is_tolerated() -> None:
    """A worker silent for exactly the limit is not yet suspect."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1, now_ns=100)
    _assign(dispatcher)
    assert dispatcher.worker_silent(now_ns=1_100, silence_ns=1_000) == []


def test_idle_silent_worker_is_not_suspect() -> None:
    """Silence without work in flight is not a fault."""
    dispatcher = Dispatcher(max_queue=8)
    _worker(dispatcher, b"w1", 1, now_ns=0)
    assert dispatcher.worker_silent(now_ns=10**12, silence_ns=1) == []
    assert not dispatcher.workers[b"w1"].suspect


def test_silent_worker_is_reported_once() -> None:
    """A worker already suspect is not reported again."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    dispatcher.workers[b"w1"].inflight.add(99)  # still holding something
    assert len(dispatcher.worker_silent(now_ns=10, silence_ns=1)) == 1
    dispatcher.workers[b"w1"].inflight.add(99)
    assert dispatcher.worker_silent(now_ns=20, silence_ns=1) == []


def test_silent_worker_exhausts_a_second_attempt() -> None:
    """Work hung on its second worker is returned as exhausted."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    dispatcher.worker_lost(b"w1")
    _worker(dispatcher, b"w2", 1)
    _assign(dispatcher)
    [(slot, exhausted)] = dispatcher.worker_silent(now_ns=10, silence_ns=1)
    assert (slot.identity, exhausted) == (b"w2", [request])


def test_expired_in_deadline_order() -> None:
    """Expired requests come out earliest deadline first, including one due exactly now."""
    dispatcher = Dispatcher(max_queue=8)
    late = _request(dispatcher, 300)
    early = _request(dispatcher, 100)
    middle = _request(dispatcher, 200)
    future = _request(dispatcher, 301)
    for request in (late, early, middle, future):
        dispatcher.admit(request)
    assert dispatcher.expired(300) == [early, middle, late]
    assert set(dispatcher.open) == {future.rid}


def test_expired_inflight_request_leaves_its_worker() -> None:
    """An in-flight request that expires is no longer counted against its worker."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1, due_ns=50)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    assert dispatcher.expired(50) == [request]
    assert dispatcher.workers[b"w1"].inflight == set()
    assert dispatcher.complete(b"w1", request.rid) is None


def test_completed_request_does_not_expire() -> None:
    """A request answered before its deadline is not reported as expired."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1, due_ns=50)
    _worker(dispatcher, b"w1", 1)
    _assign(dispatcher)
    dispatcher.complete(b"w1", request.rid)
    assert dispatcher.expired(10**9) == []


def test_expired_queued_request_is_not_assigned() -> None:
    """A request that expired while queued is skipped without using credit."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 1, due_ns=10)
    (kept,) = _admitted(dispatcher, 1, due_ns=500)
    dispatcher.expired(10)
    _worker(dispatcher, b"w1", 5)
    assert _assign(dispatcher) == [(b"w1", kept.rid)]
    assert dispatcher.workers[b"w1"].credit == 4


def test_next_deadline_is_the_earliest_open_one() -> None:
    """next_deadline skips requests that already ended; None when nothing is open."""
    dispatcher = Dispatcher(max_queue=8)
    assert dispatcher.next_deadline() is None
    first = _admitted(dispatcher, 1, due_ns=100)[0]
    _admitted(dispatcher, 1, due_ns=200)
    assert dispatcher.next_deadline() == Deadline(100)
    dispatcher.close(first.rid)
    assert dispatcher.next_deadline() == Deadline(200)
    dispatcher.expired(200)
    assert dispatcher.next_deadline() is None


def test_close_ends_an_open_request_once() -> None:
    """close() returns the request the first time and None after."""
    dispatcher = Dispatcher(max_queue=8)
    (request,) = _admitted(dispatcher, 1)
    assert dispatcher.close(request.rid) is request
    assert dispatcher.close(request.rid) is None


def test_expired_requests_free_their_queue_places() -> None:
    """Requests that expired while queued no longer count against max_queue."""
    dispatcher = Dispatcher(max_queue=2)
    _admitted(dispatcher, 2, due_ns=10)
    assert len(dispatcher.expired(10)) == 2
    assert dispatcher.open == {}
    assert dispatcher.admit(_request(dispatcher))


def test_silent_worker_regains_its_whole_capacity_when_it_answers() -> None:
    """Work re-dispatched away from a silent worker still counts against it until it
    answers; then it has its full capacity again (not only what it held)."""
    dispatcher = Dispatcher(max_queue=8)
    requests = _admitted(dispatcher, 2)
    _worker(dispatcher, b"w1", 4, now_ns=100)
    _assign(dispatcher)
    dispatcher.worker_silent(now_ns=1_101, silence_ns=1_000)
    slot = dispatcher.workers[b"w1"]
    assert slot.credit == 2
    dispatcher.worker_seen(b"w1", 1_200)
    for request in requests:
        dispatcher.complete(b"w1", request.rid)
    assert (slot.suspect, slot.credit) == (False, 4)


def test_capacity_offered_again_is_not_added_twice() -> None:
    """A worker re-sends its capacity on every new connection: the ingest sets it, and what
    it already handed that worker still counts."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 3)
    _worker(dispatcher, b"w1", 4)
    _assign(dispatcher)
    _worker(dispatcher, b"w1", 4)
    assert dispatcher.workers[b"w1"].credit == 1


def test_a_reconnected_worker_process_is_recognised() -> None:
    """Two connections from one worker process (same pid and host) are found as one."""
    dispatcher = Dispatcher(max_queue=8)
    old = dispatcher.worker_seen(b"old", 0)
    new = dispatcher.worker_seen(b"new", 1)
    other = dispatcher.worker_seen(b"other", 1)
    old.pid, old.host = 7, "h"
    new.pid, new.host = 7, "h"
    other.pid, other.host = 8, "h"
    assert dispatcher.same_process(new) == [b"old"]
    assert dispatcher.same_process(dispatcher.worker_seen(b"anon", 2)) == []


def test_a_worker_holding_enough_work_is_given_no_more() -> None:
    """With a price and a hold limit, a worker that holds work is given more only while it
    stays within the limit; an idle worker always takes the next request."""
    dispatcher = Dispatcher(max_queue=8)
    _admitted(dispatcher, 3, pixels=100)
    _worker(dispatcher, b"w1", 8)

    def price(pixels: int) -> int:
        return pixels * 10  # 1000 ns a request

    assert [r.rid for _, r in dispatcher.assignments(price, hold_ns=2000)] == [1, 2]
    assert [r.rid for r in dispatcher.queue] == [3]
    dispatcher.complete(b"w1", 1)
    assert [r.rid for _, r in dispatcher.assignments(price, hold_ns=2000)] == [3]


def _counting_pops(dispatcher: Dispatcher) -> list[int]:
    """Count the requests each pass takes off the queue (passed over ones included)."""
    pops = [0]
    pop = dispatcher.queue.pop

    def counted(skip: frozenset[str] | set[str] = frozenset()) -> object:
        pops[0] += 1
        return pop(skip)

    dispatcher.queue.pop = counted  # type: ignore[method-assign,assignment]
    return pops


def test_a_pass_ends_once_no_worker_has_room_for_the_cheapest_queued_request() -> None:
    """Under a steady backlog the workers are at their hold limit: a pass takes no request
    off the queue only to put it back, and the queue keeps its order."""
    dispatcher = Dispatcher(max_queue=64)
    _admitted(dispatcher, 40, pixels=100)
    _worker(dispatcher, b"w1", 16)
    pops = _counting_pops(dispatcher)

    def price(pixels: int) -> int:
        return pixels * 10  # 1000 ns a request

    assert [r.rid for _, r in dispatcher.assignments(price, hold_ns=2000)] == [1, 2]
    assert pops[0] == 2
    assert list(dispatcher.assignments(price, hold_ns=2000)) == []
    assert pops[0] == 2
    assert [r.rid for r in dispatcher.queue] == list(range(3, 41))
    dispatcher.complete(b"w1", 1)
    assert [r.rid for _, r in dispatcher.assignments(price, hold_ns=2000)] == [3]
    assert pops[0] == 3


def test_a_cheaper_request_behind_ones_that_do_not_fit_still_goes() -> None:
    """A worker with room for a small request but not a large one is given the small one
    from behind the large ones, which keep their places."""
    dispatcher = Dispatcher(max_queue=64)
    _admitted(dispatcher, 1, pixels=100)
    _worker(dispatcher, b"w1", 16)

    def price(pixels: int) -> int:
        return pixels * 10

    assert [r.rid for _, r in dispatcher.assignments(price, hold_ns=2000)] == [1]
    _admitted(dispatcher, 3, pixels=150)  # 1500 ns each: 2500 held would be past the limit
    _admitted(dispatcher, 1, pixels=50)
    assert [r.rid for _, r in dispatcher.assignments(price, hold_ns=2000)] == [5]
    assert [r.rid for r in dispatcher.queue] == [2, 3, 4]


def test_frames_of_an_unpriced_size_go_one_at_a_time_to_all_workers_but_one() -> None:
    """Until a frame size has a price, a worker holds one such request at most and one
    worker holds none: priced work passes the unpriced ones, which keep their order."""
    dispatcher = Dispatcher(max_queue=8)
    for pixels in [50, 50, 50, 100, 50, 100]:
        _admitted(dispatcher, 1, pixels=pixels)
    for name in (b"w1", b"w2", b"w3"):
        _worker(dispatcher, name, 4)

    def priced(pixels: int) -> bool:
        return pixels == 100

    def assign() -> list[tuple[bytes, int]]:
        return [(s.identity, r.rid) for s, r in dispatcher.assignments(priced=priced)]

    assert assign() == [(b"w1", 1), (b"w2", 2), (b"w3", 4), (b"w1", 6)]
    assert [r.rid for r in dispatcher.queue] == [3, 5]
    dispatcher.complete(b"w2", 2)
    assert assign() == [(b"w2", 3)]
    dispatcher.complete(b"w1", 1)
    assert assign() == [(b"w1", 5)]
    assert list(dispatcher.queue) == []


def test_requests_passed_over_go_back_to_the_head_of_their_peers_fifo() -> None:
    """A request no worker can take now keeps its place at its peer's head, before that
    peer's newer work, while another peer's work goes ahead."""
    dispatcher = Dispatcher(max_queue=8)
    for peer, model in zip("aaab", ["other", "other", "", ""], strict=True):
        request = _request(dispatcher)
        request.peer, request.model = peer, model
        assert dispatcher.admit(request)
    _worker(dispatcher, b"w1", 4)
    dispatcher.workers[b"w1"].model = "det"
    assert _assign(dispatcher) == [(b"w1", 4), (b"w1", 3)]
    assert [r.rid for r in dispatcher.queue] == [1, 2]
    dispatcher.worker_seen(b"w2", 0, name="w2").capacity = 4
    assert _assign(dispatcher) == [(b"w2", 1), (b"w2", 2)]


def _from(
    dispatcher: Dispatcher,
    peer: str,
    count: int,
    now_ns: int = 0,
    *,
    priority: int = 0,
    pixels: int = 0,
) -> list[Request]:
    requests = []
    for _ in range(count):
        request = _request(dispatcher, due_ns=10**12, pixels=pixels)
        request.peer, request.admitted_ns, request.priority = peer, now_ns, priority
        assert dispatcher.admit(request)
        requests.append(request)
    return requests


def test_while_others_are_active_a_flood_never_holds_every_worker() -> None:
    """With another peer active, a flooding peer's work stays on all workers but one; the
    other peer's request goes to the worker that holds none of it."""
    dispatcher = Dispatcher(max_queue=100, active_ns=1_000)
    _worker(dispatcher, b"w1", 8)
    _worker(dispatcher, b"w2", 8)
    _from(dispatcher, "calm", 1)
    first = list(dispatcher.assignments(now_ns=0))
    assert [r.peer for _, r in first] == ["calm"]
    calm_worker = first[0][0].identity
    _from(dispatcher, "flood", 20)
    flooded = {slot.identity for slot, _ in dispatcher.assignments(now_ns=0)}
    assert flooded and calm_worker not in flooded  # the calm peer's worker is left alone
    # Once the calm peer has been quiet for longer than `active_ns`, the flood may spread.
    dispatcher.complete(calm_worker, first[0][1].rid)
    spread = {slot.identity for slot, _ in dispatcher.assignments(now_ns=10_000)}
    assert spread == {calm_worker}


def test_a_lone_peer_uses_every_worker() -> None:
    """With no other peer active, one peer's work goes to every worker with credit."""
    dispatcher = Dispatcher(max_queue=100, active_ns=1_000)
    _worker(dispatcher, b"w1", 2)
    _worker(dispatcher, b"w2", 2)
    _from(dispatcher, "only", 4)
    assert {slot.identity for slot, _ in dispatcher.assignments(now_ns=0)} == {b"w1", b"w2"}


def test_a_peer_of_another_priority_class_keeps_no_worker_apart() -> None:
    """Workers are kept apart only within a class: a periodic request at the safety priority
    (the watchdog's probe) takes no worker from a client of the lowest class."""
    dispatcher = Dispatcher(max_queue=100, active_ns=1_000)
    _worker(dispatcher, b"w1", 2)
    _worker(dispatcher, b"w2", 2)
    _from(dispatcher, "watchdog", 1, priority=7)
    assert len(list(dispatcher.assignments(now_ns=0))) == 1
    _from(dispatcher, "client", 3)
    assert {slot.identity for slot, _ in dispatcher.assignments(now_ns=0)} == {b"w1", b"w2"}


def test_a_backlogged_peer_runs_in_the_background_while_others_are_active() -> None:
    """A peer with more queued behind a request (asking beyond its share) has it marked
    `background` while another peer is active in its class; the other peer's request, and
    the last of the backlog, are not; a lone peer's never are."""
    dispatcher = Dispatcher(max_queue=100, active_ns=1_000)
    _worker(dispatcher, b"w1", 8)
    _worker(dispatcher, b"w2", 8)
    _from(dispatcher, "only", 3)
    assert [r.background for _, r in dispatcher.assignments(now_ns=0)] == [False] * 3
    _from(dispatcher, "calm", 1)
    _from(dispatcher, "flood", 3)
    marked = [(r.peer, r.background) for _, r in dispatcher.assignments(now_ns=0)]
    assert sorted(marked) == [("calm", False), ("flood", False), ("flood", True), ("flood", True)]


def test_work_beyond_a_share_waits_while_work_within_one_is_in_flight() -> None:
    """While a request within its share is in flight, a backlogged peer's requests stay
    queued (for `yield_ns` at most); they go as soon as it is answered."""
    dispatcher = Dispatcher(max_queue=100, active_ns=10_000, yield_ns=1_000)
    _worker(dispatcher, b"w1", 8)
    _worker(dispatcher, b"w2", 8)
    calm = _from(dispatcher, "calm", 1)[0]
    _from(dispatcher, "flood", 4)
    assert [r.peer for _, r in dispatcher.assignments(now_ns=0)] == ["calm"]
    assert list(dispatcher.assignments(now_ns=500)) == []  # held: the calm request runs
    assert len(dispatcher.queue) == 4
    assert calm.worker is not None
    dispatcher.complete(calm.worker, calm.rid)
    released = [r for _, r in dispatcher.assignments(now_ns=600)]
    assert [r.peer for r in released] == ["flood"] * 4
    assert [r.background for r in released] == [True, True, True, False]


def test_a_hold_lasts_its_limit_and_is_followed_by_as_long_a_free_spell() -> None:
    """Peers within their share that keep requests in flight all the time cannot starve a
    backlogged peer: a hold ends after `yield_ns`, and the next starts only after a free
    spell as long."""
    dispatcher = Dispatcher(max_queue=100, active_ns=100_000, yield_ns=1_000)
    _worker(dispatcher, b"w1", 4)
    _from(dispatcher, "calm", 1)  # stays in flight: never answered here
    _from(dispatcher, "flood", 10)
    assert [r.peer for _, r in dispatcher.assignments(now_ns=0)] == ["calm"]
    assert list(dispatcher.assignments(now_ns=999)) == []
    freed = [r for _, r in dispatcher.assignments(now_ns=1_000)]  # over: a free spell
    assert [(r.peer, r.background) for r in freed] == [("flood", True)] * 3
    slot = dispatcher.workers[b"w1"]
    dispatcher.complete(b"w1", freed[0].rid)
    assert len(list(dispatcher.assignments(now_ns=1_500))) == 1  # free until 2_000
    dispatcher.complete(b"w1", freed[1].rid)
    assert list(dispatcher.assignments(now_ns=2_000)) == []  # a new hold
    assert slot.credit == 1


def test_a_request_within_its_share_is_not_held_behind_many_held_ones() -> None:
    """A request within its share whose fair tag comes after many of a held peer's (its
    previous request was large) is still dispatched at once: the held peer's requests are
    passed over where they wait, not taken one by one."""
    dispatcher = Dispatcher(max_queue=100, active_ns=10_000, yield_ns=1_000)
    _worker(dispatcher, b"w1", 4)
    _worker(dispatcher, b"w2", 4)
    first = _request(dispatcher, due_ns=10**12)
    # A large frame: the calm peer's next request is tagged far behind the flood's.
    first.peer, first.cost_ns = "calm", 10_000
    assert dispatcher.admit(first)
    _from(dispatcher, "other", 1)  # another request within its share, in flight
    _from(dispatcher, "flood", 40)
    assert {r.peer for _, r in dispatcher.assignments(now_ns=0)} == {"calm", "other"}
    assert first.worker is not None
    dispatcher.complete(first.worker, first.rid)
    _from(dispatcher, "calm", 1)
    assert [r.peer for _, r in dispatcher.assignments(now_ns=10)] == ["calm"]


def test_a_request_within_its_share_is_not_held() -> None:
    """The hold is for backlogged peers only: another peer's single request goes at once."""
    dispatcher = Dispatcher(max_queue=100, active_ns=10_000, yield_ns=1_000)
    _worker(dispatcher, b"w1", 8)
    _worker(dispatcher, b"w2", 8)
    _from(dispatcher, "calm", 1)
    assert len(list(dispatcher.assignments(now_ns=0))) == 1
    _from(dispatcher, "other", 1)
    assert [r.peer for _, r in dispatcher.assignments(now_ns=10)] == ["other"]


def test_a_bulk_request_runs_in_the_background_while_others_are_active() -> None:
    """One request can be more than a share on its own: while others are active, a request
    priced above `bulk_ns`, or of a size never measured, is marked `background` (and waits
    while work within a share is in flight); a lone peer's never is, nor is anything before
    the first measurement."""
    dispatcher = Dispatcher(max_queue=100, active_ns=10_000, yield_ns=1_000, bulk_ns=500)
    _worker(dispatcher, b"w1", 8)
    _worker(dispatcher, b"w2", 8)

    def price(pixels: int) -> int:
        return pixels  # 1 ns a pixel

    def priced(pixels: int) -> bool:
        return pixels <= 1000

    def assign(now_ns: int) -> dict[str, bool]:
        return {r.peer: r.background for _, r in dispatcher.assignments(price, 0, priced, now_ns)}

    lone = _from(dispatcher, "large", 1, pixels=2000)[0]
    assert assign(0) == {"large": False}  # no one else is active
    assert lone.worker is not None
    dispatcher.complete(lone.worker, lone.rid)
    # 400: within the limit; 900: priced over it; 2000: never measured.
    for pixels, now_ns, bulk in ((400, 10, False), (900, 20, True), (2000, 30, True)):
        calm = _from(dispatcher, "calm", 1, pixels=400)[0]
        assert assign(now_ns) == {"calm": False}
        request = _from(dispatcher, "large", 1, pixels=pixels)[0]
        if bulk:  # held while the calm request is in flight, released after it
            assert assign(now_ns + 1) == {}
            assert calm.worker is not None
            dispatcher.complete(calm.worker, calm.rid)
            assert assign(now_ns + 2) == {"large": True}
        else:
            assert assign(now_ns + 1) == {"large": False}
            assert calm.worker is not None
            dispatcher.complete(calm.worker, calm.rid)
        assert request.worker is not None
        dispatcher.complete(request.worker, request.rid)
    unmeasured = Dispatcher(max_queue=100, active_ns=10_000, bulk_ns=500)
    _worker(unmeasured, b"w1", 8)
    for peer in ("large", "calm"):
        _from(unmeasured, peer, 1, pixels=5000)
    assert [r.background for _, r in unmeasured.assignments(price, 0, None, 0)] == [False] * 2


def test_a_request_within_its_share_is_not_left_behind_a_flood_its_workers_cannot_take() -> None:
    """A flood at its share of workers, those workers full, is passed over where it waits:
    another peer's request whose fair tag comes after many of the flood's (its previous
    request was large) still goes in the same pass, to the worker kept for it."""
    dispatcher = Dispatcher(max_queue=100, active_ns=10_000)
    _worker(dispatcher, b"w1", 4)
    _worker(dispatcher, b"w2", 4)
    first = _request(dispatcher, due_ns=10**12)
    first.peer, first.cost_ns = "calm", 10_000  # a large frame: its next tag is far behind
    assert dispatcher.admit(first)
    _from(dispatcher, "flood", 40)
    placed = [(slot.identity, r.peer) for slot, r in dispatcher.assignments(now_ns=0)]
    assert placed.count((b"w1", "calm")) + placed.count((b"w2", "calm")) == 1
    assert len({w for w, peer in placed if peer == "flood"}) == 1  # all workers but one
    assert first.worker is not None
    dispatcher.complete(first.worker, first.rid)
    _from(dispatcher, "calm", 1)
    assert [r.peer for _, r in dispatcher.assignments(now_ns=10)] == ["calm"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 12), st.sampled_from([100, 50_176, 2_073_600])),
        max_size=60,
    )
)
def test_a_workers_counts_always_match_what_it_holds(steps: list[tuple[bool, int, int]]) -> None:
    """Whatever a worker is given and gives back (twice, or never given, included), its
    held work and its peers are those of the requests it holds, priced one by one."""
    slot = WorkerSlot(identity=b"w", last_heard_ns=0)
    for give, rid, pixels in steps:
        if give:
            slot.hold(rid, pixels, f"peer{rid % 3}")
        else:
            slot.release(rid)
    assert slot.held_work_ns(lambda p: 3 * p + 7) == sum(3 * p + 7 for p in slot.held.values())
    for peer in ("peer0", "peer1", "peer2"):
        assert slot.holds_for(peer) == (peer in slot.owners.values())
        assert slot.other_peers(peer) == len(set(slot.owners.values()) - {peer})
    assert sorted(slot.sizes) == sorted(set(slot.held.values()))
