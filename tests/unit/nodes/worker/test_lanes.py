"""Lanes: how free cores are shared out, and the threads that run batches."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from vigil.nodes.worker._lanes import Lanes, LoneChoice, Plan, plan


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
