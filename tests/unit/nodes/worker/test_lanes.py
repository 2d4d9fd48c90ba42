"""Lanes: how free cores are shared out, and the threads that run batches."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from vigil.nodes.worker._lanes import Lanes, LoneChoice, Plan, SpareCores, plan


def test_lone_request_on_idle_worker_runs_wide() -> None:
    """One request and every lane free: one batch on every core."""
    assert plan(ready=1, idle=2, lanes=2, max_batch=4) == Plan(wide=True, sizes=(1,))


def test_load_runs_as_parallel_batches() -> None:
    """More than one request: batches side by side, one per free lane, split evenly."""
    assert plan(ready=4, idle=2, lanes=2, max_batch=4) == Plan(wide=False, sizes=(2, 2))
    assert plan(ready=5, idle=2, lanes=2, max_batch=4) == Plan(wide=False, sizes=(3, 2))
    assert plan(ready=2, idle=4, lanes=4, max_batch=4) == Plan(wide=False, sizes=(1, 1))
    assert plan(ready=20, idle=2, lanes=2, max_batch=4) == Plan(wide=False, sizes=(4, 4))


def test_lone_request_runs_narrow_when_told_wide_is_slower() -> None:
    """A lone request runs on one lane when the wide way is not the faster one now."""
    assert plan(ready=1, idle=2, lanes=2, max_batch=4, lone_wide=False) == Plan(
        wide=False, sizes=(1,)
    )


def test_lone_choice_tries_wide_then_narrow_then_takes_the_faster() -> None:
    """With nothing known it runs wide, then narrow once, then whichever was faster."""
    choice = LoneChoice(explore_every=100, idle_cores=lambda: 1.0)
    assert choice.wide()
    choice.observe(wide=True, elapsed_ns=60)
    assert not choice.wide()
    choice.observe(wide=False, elapsed_ns=80)
    assert [choice.wide() for _ in range(5)] == [True] * 5


def test_lone_choice_follows_a_host_that_got_busy() -> None:
    """When other processes make wide runs slow, lone requests go narrow; the wide way is
    still tried now and then, and taken again once it is faster."""
    choice = LoneChoice(explore_every=4, weight=1.0, idle_cores=lambda: 1.0)
    choice.observe(wide=True, elapsed_ns=60)
    choice.observe(wide=False, elapsed_ns=80)
    choice.observe(wide=True, elapsed_ns=150)  # the other core is taken now
    picks = [choice.wide() for _ in range(8)]
    assert picks.count(True) == 2 and picks.count(False) == 6  # one try in four
    choice.observe(wide=True, elapsed_ns=60)  # quiet again
    assert choice.wide()


def test_while_wide_is_faster_every_lone_request_runs_wide() -> None:
    """Narrow is not tried while wide is faster: wide's own runs keep its time current."""
    choice = LoneChoice(explore_every=4, weight=1.0, idle_cores=lambda: 1.0)
    choice.observe(wide=True, elapsed_ns=60)
    choice.observe(wide=False, elapsed_ns=80)
    assert [choice.wide() for _ in range(12)] == [True] * 12
    choice.observe(wide=True, elapsed_ns=90)  # slower now: narrow from the next one on
    assert not choice.wide()


def test_lone_choice_stays_narrow_while_no_core_is_idle() -> None:
    """On a host that others keep busy, wide is neither tried first nor explored later,
    and it is tried again once a core is idle."""
    idle = [0.1]
    choice = LoneChoice(explore_every=2, idle_cores=lambda: idle[0])
    assert [choice.wide() for _ in range(6)] == [False] * 6
    idle[0] = 1.0
    assert choice.wide()


def test_a_fixed_lone_choice_ignores_the_host_and_the_times() -> None:
    """`lone_request: wide` runs every lone request wide on a busy host, `narrow` never."""
    wide = LoneChoice(always=True, idle_cores=lambda: 0.0)
    wide.observe(wide=True, elapsed_ns=10**9)
    wide.observe(wide=False, elapsed_ns=1)
    assert all(wide.wide() for _ in range(40))
    narrow = LoneChoice(always=False, idle_cores=lambda: 2.0)
    assert not any(narrow.wide() for _ in range(40))


def _spare_cores(busy_s: list[float], running: list[int]) -> tuple[SpareCores, list[float]]:
    """SpareCores on a 2-core host whose busy time is `busy_s` at 0 s, 1 s, 2 s ... (this
    process idle), and whose running threads are counted as `running`, look after look."""
    clock = iter(range(len(busy_s)))
    busy = iter(busy_s)
    counts = iter(running)
    pauses: list[float] = []
    spare = SpareCores(
        host=lambda: (float(next(clock)), next(busy)),
        own=lambda: 0.0,
        running=lambda: next(counts),
        cores=2,
        pause=pauses.append,
    )
    return spare, pauses


def test_threads_still_handing_over_a_request_leave_the_cores_spare() -> None:
    """The client, ingest and I/O threads that carried a lone request are often still on a
    CPU when it arrives: looked at again a moment later they are gone, and the host counts
    as idle."""
    spare, pauses = _spare_cores([0.0, 0.1], running=[5, 4, 2])
    assert spare() == pytest.approx(1.9)  # what the others' busy time leaves
    assert len(pauses) == 2


def test_a_load_that_began_a_moment_ago_leaves_no_core() -> None:
    """Threads that stay on the CPUs look after look take the cores before the busy time
    shows them."""
    spare, pauses = _spare_cores([0.0, 0.1], running=[4, 4, 4])
    assert spare() == 0.0
    assert len(pauses) == 2


def test_a_quiet_host_is_looked_at_once() -> None:
    """One look that leaves the cores the busy time left is enough; a thread more than the
    hand-over allowance, look after look, takes a core."""
    spare, pauses = _spare_cores([0.0, 0.1, 0.2], running=[2, 3, 3, 3])
    assert spare() == pytest.approx(1.9)
    assert pauses == []
    assert spare() == 1.0
    assert len(pauses) == 2


def test_cores_kept_busy_by_others_are_not_spare() -> None:
    """Others used 1.6 of 2 cores since the last look: no wide run, whatever runs now."""
    spare, pauses = _spare_cores([0.0, 1.6], running=[])
    assert round(spare(), 6) == 0.4
    assert pauses == []


def test_busy_lane_leaves_the_rest_narrow() -> None:
    """With a lane busy, even a lone request runs on its own lane's share only."""
    assert plan(ready=1, idle=1, lanes=2, max_batch=4) == Plan(wide=False, sizes=(1,))


def test_single_lane_always_runs_wide() -> None:
    """One lane: every batch uses the whole budget."""
    assert plan(ready=6, idle=1, lanes=1, max_batch=4) == Plan(wide=True, sizes=(4,))


def test_gpu_lanes_take_full_batches() -> None:
    """Without splitting, each free lane takes as full a batch as the queue allows."""
    assert plan(ready=40, idle=2, lanes=2, max_batch=32, split=False).sizes == (32, 8)
    assert plan(ready=4, idle=2, lanes=2, max_batch=32, split=False).sizes == (4,)


def test_nothing_to_start() -> None:
    """No request or no free lane: nothing starts."""
    assert plan(ready=0, idle=2, lanes=2, max_batch=4).sizes == ()
    assert plan(ready=3, idle=0, lanes=2, max_batch=4).sizes == ()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    with zmq.Context() as context:
        yield context


def test_batches_run_side_by_side(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Two lanes run two batches at once; each comes back with its tag and result."""
    both = threading.Barrier(2, timeout=30)

    def work(value: int) -> object:
        def run() -> int:
            both.wait()  # returns only if the other batch runs at the same time
            return value

        return run

    with Lanes[int](ctx, 2) as lanes:
        a = lanes.start(work(1))
        b = lanes.start(work(2))
        assert lanes.idle == 0
        done = []
        while len(done) < 2:
            done += lanes.wait(30_000)
        assert {(f.tag, f.result) for f in done} == {(a, 1), (b, 2)}
        assert lanes.idle == 2


def test_wide_batch_holds_every_lane(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """While a wide batch runs no lane is free, and a wide batch needs all of them free."""
    release = threading.Event()
    with Lanes[int](ctx, 2) as lanes:
        lanes.start(lambda: int(release.wait(30)), wide=True)
        assert lanes.idle == 0
        with pytest.raises(RuntimeError):
            lanes.start(lambda: 0)
        release.set()
        assert [f.result for f in lanes.wait(30_000)] == [1]
        assert lanes.idle == 2


def test_failed_batch_reports_its_error(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """An exception in a batch comes back as its error; the lane stays usable."""

    def fail() -> int:
        raise ValueError("broken model")

    with Lanes[int](ctx, 1) as lanes:
        lanes.start(fail)
        (done,) = lanes.wait(30_000)
        assert done.result is None and isinstance(done.error, ValueError)
        lanes.start(lambda: 7)
        assert [f.result for f in lanes.wait(30_000)] == [7]
