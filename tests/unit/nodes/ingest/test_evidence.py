"""The ingest's request evidence: what ends within a short window goes out as one message."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
import zmq

from vigil.bus.envelope import TraceContext
from vigil.bus.pubsub import Publisher, Received, Subscriber
from vigil.nodes._tracing import RequestSpans
from vigil.nodes.ingest._evidence import WINDOW_NS, Evidence, RequestPath
from vigil.schemas import (
    EndedRequests,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferResult,
    Outcome,
    PerceptionOutput,
    Topic,
)
from vigil.schemas.evidence import MAX_ENDED

pytestmark = pytest.mark.verifies("SR-LOG-003")

FENCE = "test/fence"
WAIT_S = 10.0


class Bus:
    """A publisher and a subscriber of the evidence topic, on a real ipc socket."""

    def __init__(self, pub: Publisher, sub: Subscriber) -> None:
        self.pub = pub
        self.sub = sub

    def until_fence(self) -> list[Received]:
        """Publish a fence and return every evidence message that came before it."""
        fence = self.pub.publish(FENCE, Heartbeat(node="t", instance=0, pid=1, period_ms=1))
        got: list[Received] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            received = self.sub.recv(timeout_ms=50)
            if received is None:
                continue
            if received.topic == FENCE and received.envelope.seq == fence:
                return got
            if received.topic == Topic.REQUEST_EVIDENCE:
                got.append(received)
        pytest.fail(f"no fence within {WAIT_S} s")


@pytest.fixture
def bus() -> Iterator[Bus]:
    """A live subscription: warm-ups are published until one arrives."""
    folder = tempfile.mkdtemp(prefix="vigil-", dir="/tmp")
    endpoint = f"ipc://{folder}/bus"
    try:
        with (
            zmq.Context() as ctx,
            Publisher(ctx, endpoint, source="ingest", bind=True) as pub,
            Subscriber(ctx, endpoint, [Topic.REQUEST_EVIDENCE, FENCE]) as sub,
        ):
            deadline = time.monotonic() + WAIT_S
            while sub.recv(timeout_ms=50) is None:
                assert time.monotonic() < deadline, "subscription not live"
                pub.publish(FENCE, Heartbeat(node="t", instance=0, pid=1, period_ms=1))
            bus = Bus(pub, sub)
            bus.until_fence()
            yield bus
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


def _path(clock: Clock) -> RequestPath:
    return RequestPath(TraceContext.new(), None, clock(), peer="client.1", stream_id="cam")


def _result() -> InferResult:
    return InferResult(
        stream_id="cam",
        frame_ts_us=1,
        model="m",
        version="1",
        output=PerceptionOutput(confidence=0.9, timestamp_us=1, boxes=[]),
    )


def _refusal() -> ErrorReply:
    return ErrorReply(code=ErrorCode.RESOURCE_EXHAUSTED, message="resource exhausted")


def test_what_ends_within_the_window_goes_out_as_one_message(bus: Bus) -> None:
    """Three requests end: turns inside the window publish nothing; the first turn after it
    publishes one message with the three in the order they ended, each in its own trace."""
    clock = Clock()
    evidence = Evidence(bus.pub, RequestSpans(), clock)
    paths = [_path(clock) for _ in range(3)]
    evidence.ended(paths[0], _result(), b"r0", outcome=Outcome.SERVED)
    evidence.ended(paths[1], _refusal(), b"r1", outcome=Outcome.REFUSED)
    evidence.turn_ended()
    evidence.ended(paths[2], _result(), b"r2", outcome=Outcome.SERVED)
    evidence.turn_ended()
    assert evidence.pending == 3
    assert bus.until_fence() == []
    clock.now += WINDOW_NS
    evidence.turn_ended()
    (message,) = bus.until_fence()
    assert isinstance(message.body, EndedRequests)
    ended = message.body.requests
    assert [e.trace_id for e in ended] == [p.trace.trace_id for p in paths]
    assert [e.evidence.outcome for e in ended] == [Outcome.SERVED, Outcome.REFUSED, Outcome.SERVED]
    assert ended[1].evidence.code == "RESOURCE_EXHAUSTED"
    clock.now += WINDOW_NS
    evidence.turn_ended()
    assert evidence.pending == 0 and bus.until_fence() == []


def test_a_full_message_goes_out_without_waiting(bus: Bus) -> None:
    """As many requests as one message holds are published at the end of the turn."""
    clock = Clock()
    evidence = Evidence(bus.pub, RequestSpans(), clock)
    for _ in range(MAX_ENDED):
        evidence.ended(_path(clock), _refusal(), b"", outcome=Outcome.REFUSED)
    evidence.turn_ended()
    (message,) = bus.until_fence()
    assert isinstance(message.body, EndedRequests) and len(message.body.requests) == MAX_ENDED


def test_a_flush_publishes_everything_waiting_and_loses_nothing(bus: Bus) -> None:
    """On the way out everything waiting goes at once, in as many messages as it needs."""
    clock = Clock()
    evidence = Evidence(bus.pub, RequestSpans(), clock)
    paths = [_path(clock) for _ in range(MAX_ENDED + 5)]
    for path in paths:
        evidence.ended(path, _refusal(), b"", outcome=Outcome.REFUSED)
    evidence.flush()
    messages = bus.until_fence()
    sizes = [len(m.body.requests) for m in messages if isinstance(m.body, EndedRequests)]
    assert sizes == [MAX_ENDED, 5]
    traces = [
        e.trace_id for m in messages if isinstance(m.body, EndedRequests) for e in m.body.requests
    ]
    assert traces == [p.trace.trace_id for p in paths]


def test_without_evidence_nothing_is_gathered_or_published(bus: Bus) -> None:
    """With publishing off (to measure its cost) a flush publishes nothing."""
    clock = Clock()
    evidence = Evidence(bus.pub, RequestSpans(), clock, publish=False)
    evidence.ended(_path(clock), _result(), b"r", outcome=Outcome.SERVED)
    evidence.flush()
    assert evidence.pending == 0 and bus.until_fence() == []
