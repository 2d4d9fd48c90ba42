"""Heartbeats come from their own thread: a busy node loop does not stop them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq

from vigil.bus.clock import to_next_tick
from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.nodes import _runtime
from vigil.nodes._runtime import Node
from vigil.nodes.contract import NodeArgs
from vigil.schemas import Heartbeat, Topic

pytestmark = pytest.mark.verifies("SR-HB-001")


def test_heartbeats_continue_while_the_node_loop_is_busy(short_tmp: Path) -> None:
    """While the node's loop is stuck in work for 0.6 s, its heartbeat keeps its 50 ms period
    (and says how old the loop turn is)."""
    run = RunDir(short_tmp / "run")
    stop = threading.Event()
    with zmq.Context() as ctx:

        def pump() -> None:
            with Proxy(ctx, run.pub, run.sub) as proxy:
                poller = zmq.Poller()
                proxy.register(poller)
                while not stop.is_set():
                    proxy.handle(dict(poller.poll(20)))

        thread = threading.Thread(target=pump)
        thread.start()
        try:
            args = NodeArgs(name="busy", kind="test", run_dir=str(run.path), heartbeat_ms=50)
            with Subscriber(ctx, run.sub, [Topic.HEARTBEAT]) as sub, Node(args) as node:
                assert sub.recv(5000) is not None  # subscribed and beating
                node.poll(0)  # one loop turn, then the loop is "busy" (no polling at all)
                busy_until = time.monotonic() + 0.6
                beats: list[Heartbeat] = []
                while time.monotonic() < busy_until:
                    got = sub.recv(100)
                    if got is not None and isinstance(got.body, Heartbeat):
                        beats.append(got.body)
                assert len(beats) >= 6  # 0.6 s at a 50 ms period, with room for scheduling
                ages = [int(b.detail["loop_age_ms"]) for b in beats]
                assert max(ages) >= 300  # the beat shows the loop is stuck
        finally:
            stop.set()
            thread.join()


@pytest.mark.parametrize(
    ("now_ns", "period_s", "expected_s"),
    [
        (10_050_000_000, 0.2, 0.15),
        (10_200_000_000, 0.2, 0.2),
        (0, 0.05, 0.05),
        (7_999_000_000, 1.0, 0.001),
    ],
)
def test_a_tick_is_the_next_whole_multiple_of_the_period(
    now_ns: int, period_s: float, expected_s: float
) -> None:
    """The wait ends on the period's grid, and never at once (a full period on a tick)."""
    wait = to_next_tick(period_s, now_ns)
    assert wait == pytest.approx(expected_s, abs=1e-9)
    assert (now_ns + round(wait * 1e9)) % round(period_s * 1e9) == 0


def test_beats_wait_for_the_next_tick_of_their_period(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's heartbeat thread waits until its period's next tick on the shared monotonic
    clock (so every node of a host beats at the same moments), not a period from its last."""
    waits: list[float] = []
    ticked = threading.Event()

    def recording(period_s: float, now_ns: int | None = None) -> float:
        waits.append(period_s)
        if len(waits) >= 3:
            ticked.set()
        return to_next_tick(period_s, now_ns)

    monkeypatch.setattr(_runtime, "to_next_tick", recording)
    run = RunDir(short_tmp / "run")
    args = NodeArgs(name="ticking", kind="test", run_dir=str(run.path), heartbeat_ms=20)
    with Node(args):
        assert ticked.wait(30)
    assert set(waits) == {0.02}
