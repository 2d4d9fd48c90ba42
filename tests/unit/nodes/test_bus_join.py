"""A starting node waits until its publications reach the proxy before it is ready."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zmq

from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.nodes._runtime import Node
from vigil.nodes.contract import NodeArgs
from vigil.schemas import LATCHED_TOPICS, ModelAnnouncement, Topic

pytestmark = pytest.mark.verifies("SR-WDG-003")

_MODEL = ModelAnnouncement(
    name="m", version="1", path="/m.onnx", sha256="0" * 64, size=1, input_name="x"
)


def test_a_latched_value_published_after_joining_reaches_late_subscribers(
    short_tmp: Path,
) -> None:
    """The node starts before the proxy exists: its join waits for the proxy, so the latched
    value it publishes next is kept and handed to a subscriber that comes later still."""
    run = RunDir(short_tmp / "run")
    joining, published, done = threading.Event(), threading.Event(), threading.Event()
    joined: list[bool] = []
    args = NodeArgs(name="early", kind="test", run_dir=str(run.path), heartbeat_ms=50)

    def start_node() -> None:
        # Not entered: signal handlers and the heartbeat belong to a main thread.
        node = Node(args)
        try:
            joining.set()
            joined.append(node.join_bus(timeout_s=30))
            node.publisher.publish(Topic.MODEL_ACTIVE, _MODEL)
            published.set()
            done.wait(30)  # the publisher (LINGER 0) stays open until the value arrived
        finally:
            node.__exit__(None, None, None)

    thread = threading.Thread(target=start_node)
    thread.start()
    try:
        assert joining.wait(10)
        with zmq.Context() as ctx, Proxy(ctx, run.pub, run.sub, LATCHED_TOPICS) as proxy:
            poller = zmq.Poller()
            proxy.register(poller)
            while not published.is_set() and thread.is_alive():
                proxy.handle(dict(poller.poll(10)))
            assert joined == [True]
            with Subscriber(ctx, run.sub, [Topic.MODEL_ACTIVE]) as late:
                got = None
                for _ in range(1000):
                    proxy.handle(dict(poller.poll(10)))
                    if (got := late.recv(0)) is not None:
                        break
                assert got is not None and got.body == _MODEL
    finally:
        done.set()
        thread.join()


def test_join_gives_up_without_a_proxy(short_tmp: Path) -> None:
    """With no proxy the join reports failure after its timeout instead of hanging."""
    run = RunDir(short_tmp / "run")
    args = NodeArgs(name="alone", kind="test", run_dir=str(run.path), heartbeat_ms=50)
    with Node(args) as node:
        assert node.join_bus(timeout_s=0.2) is False
