"""Heartbeats come from their own thread: a busy node loop does not stop them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq

from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
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
