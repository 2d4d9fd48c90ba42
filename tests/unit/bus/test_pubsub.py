"""Typed pub/sub over real ipc sockets, and the proxy's last-value cache."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import msgspec
import numpy as np
import pytest
import zmq

from vigil.bus.codec import Codec, topic_frame
from vigil.bus.envelope import Envelope
from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Publisher, Received, Subscriber
from vigil.schemas import LATCHED_TOPICS, Heartbeat, SafetyState, StateChange, Topic

pytestmark = pytest.mark.verifies("SR-ERR-003")

SYNC = "test/sync"
WAIT_S = 10.0
POLL_MS = 50


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A context that outlives every socket of the test."""
    with zmq.Context() as context:
        yield context


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    """A short directory for ipc endpoints (their paths must stay under 107 bytes)."""
    path = tempfile.mkdtemp(prefix="vigil-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _beat(mark: str = "") -> Heartbeat:
    return Heartbeat(node="test", instance=0, pid=1, period_ms=100, detail={"mark": mark})


def _next(sub: Subscriber) -> Received:
    """The next well-formed message; fails the test after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        received = sub.recv(timeout_ms=POLL_MS)
        if received is not None:
            return received
    pytest.fail(f"no message within {WAIT_S} s")


def _sync(pub: Publisher, sub: Subscriber, topic: str = SYNC) -> None:
    """Publish warm-ups until one arrives, then a fence, and read up to the fence: the
    subscription is live and nothing of the warm-up is left in flight."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pub.publish(topic, _beat("warm-up"))
        if sub.recv(timeout_ms=POLL_MS) is not None:
            break
    else:
        pytest.fail(f"subscription not live within {WAIT_S} s")
    fence = pub.publish(topic, _beat("fence"))
    while _next(sub).envelope.seq != fence:
        pass


def _wait_for(predicate: Callable[[], bool], sub: Subscriber) -> None:
    """Read (and discard) until `predicate()` holds; fails the test after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {WAIT_S} s")
        sub.recv(timeout_ms=POLL_MS)


def test_typed_receive(ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str) -> None:
    """A subscriber receives the typed body, its topic and a complete envelope."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", instance=2, bind=True, clock=lambda: 5) as pub,
        Subscriber(ctx, endpoint, [Topic.HEARTBEAT, SYNC]) as sub,
    ):
        _sync(pub, sub)
        seq = pub.publish(Topic.HEARTBEAT, _beat("one"), priority=3, tenant="acme")
        got = _next(sub)
    assert got.topic == Topic.HEARTBEAT
    assert got.body == _beat("one")
    assert isinstance(got.envelope, Envelope)
    assert (got.envelope.schema, got.envelope.seq) == ("health.heartbeat", seq)
    assert (got.envelope.source, got.envelope.instance, got.envelope.stamp_ns) == ("pub", 2, 5)
    assert (got.envelope.priority, got.envelope.tenant) == (3, "acme")
    assert got.size == sum(len(f) for f in got.frames)


def test_untyped_receive_gives_plain_values(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """With typed=False the body is decoded without its schema, as plain values."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, [SYNC], typed=False) as sub,
    ):
        _sync(pub, sub)
        pub.publish(SYNC, _beat("plain"))
        got = _next(sub)
    assert isinstance(got.body, dict)
    assert got.body["type"] == "health.heartbeat"
    assert got.body["detail"] == {"mark": "plain"}


def test_sequence_numbers_count_per_topic(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """Each topic has its own sequence, starting at 1."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["a", "b"], typed=False) as sub,
    ):
        _sync(pub, sub, "a")
        base = pub.publish("a", _beat())
        assert pub.publish("a", _beat()) == base + 1
        _sync(pub, sub, "b")
        assert pub.publish("b", _beat()) == pub.publish("b", _beat()) - 1


def test_a_topic_nobody_subscribes_to_is_neither_numbered_nor_sent(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """The publisher hears the subscriptions: an unwanted topic costs no encoding and no
    sequence number, and once subscribed it is sent from the next number on."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with Publisher(ctx, endpoint, source="pub", bind=True) as pub:
        assert not pub.wanted("quiet")
        assert [pub.publish("quiet", _beat()) for _ in range(3)] == [0, 0, 0]
        with Subscriber(ctx, endpoint, ["quiet"], typed=False) as sub:
            _sync(pub, sub, "quiet")
            assert pub.wanted("quiet") and not pub.wanted("quieter")
        # The subscriber left: the topic is dropped here again once its leaving is heard.
        _wait_for_unwanted(pub, "quiet")


def _wait_for_unwanted(pub: Publisher, topic: str) -> None:
    """Until the publisher heard that nobody takes `topic` (a hang guard, not a timing)."""
    deadline = time.monotonic() + WAIT_S
    while pub.wanted(topic):
        if time.monotonic() > deadline:
            pytest.fail(f"{topic} still wanted after {WAIT_S} s")
        pub.socket.poll(POLL_MS)


def test_exact_topic_does_not_match_a_longer_topic(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """A subscriber of `infer/res` does not receive `infer/result`."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["infer/res"]) as sub,
    ):
        _sync(pub, sub, "infer/res")
        pub.publish("infer/result", _beat("longer"))
        pub.publish("infer/res", _beat("exact"))
        got = _next(sub)
    # Order is kept on one connection: had `infer/result` matched, it would come first.
    assert (got.topic, got.body.detail["mark"]) == ("infer/res", "exact")
    assert "infer/result" not in sub.stats


def test_prefix_subscription_matches_every_topic_below(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """A prefix subscription receives every topic starting with the prefix, and no other."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["infer/"], prefix=True) as sub,
    ):
        _sync(pub, sub, "infer/sync")
        pub.publish(Topic.HEARTBEAT, _beat("other"))
        pub.publish(Topic.INFER_REQUEST, _beat("request"))
        pub.publish(Topic.INFER_RESULT, _beat("result"))
        topics = [_next(sub).topic, _next(sub).topic]
    assert topics == [Topic.INFER_REQUEST, Topic.INFER_RESULT]
    assert Topic.HEARTBEAT not in sub.stats


def test_sequence_gap_counts_lost_messages(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """Skipped sequence numbers are counted as lost on their topic."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["gap", SYNC]) as sub,
    ):
        _sync(pub, sub)
        pub.publish("gap", _beat())
        _next(sub)
        pub._seq["gap"] += 2  # two messages "lost" between publisher and subscriber
        seq = pub.publish("gap", _beat())
        got = _next(sub)
    assert got.envelope.seq == seq == 4
    assert sub.stats["gap"].lost == 2
    assert sub.lost == 2
    assert sub.stats["gap"].messages == 2


def test_publishers_are_numbered_apart(ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str) -> None:
    """Two publishers on one topic are tracked separately: no false gaps or duplicates."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Subscriber(ctx, endpoint, ["shared", SYNC], bind=True) as sub,
        Publisher(ctx, endpoint, source="first") as first,
        Publisher(ctx, endpoint, source="second") as second,
    ):
        _sync(first, sub)
        _sync(second, sub)
        for pub in (first, second, first, second):
            pub.publish("shared", _beat())
        seen = [(m.envelope.source, m.envelope.seq) for m in (_next(sub) for _ in range(4))]
    assert sorted(seen) == [("first", 1), ("first", 2), ("second", 1), ("second", 2)]
    stats = sub.stats["shared"]
    assert (stats.lost, stats.duplicates, stats.messages) == (0, 0, 4)


def test_duplicates_are_dropped(ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str) -> None:
    """A message whose sequence number was already seen is counted and not returned."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["dup", SYNC]) as sub,
    ):
        _sync(pub, sub)
        pub.publish("dup", _beat("first"))
        pub._seq["dup"] -= 1  # the next message repeats sequence number 1
        pub.publish("dup", _beat("again"))
        pub.publish("dup", _beat("next"))
        got = [_next(sub), _next(sub)]
    assert [m.body.detail["mark"] for m in got] == ["first", "next"]
    assert sub.stats["dup"].duplicates == 1
    assert sub.stats["dup"].lost == 0


def test_restarted_publisher_is_not_a_duplicate(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """A publisher that restarts (new session) at sequence 1 is received, not dropped."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with Subscriber(ctx, endpoint, ["restart", SYNC], bind=True) as sub:
        for life in range(2):
            with Publisher(ctx, endpoint, source="pub") as pub:
                pub._session = life  # sessions are random; fixed here so they differ
                _sync(pub, sub)
                pub.publish("restart", _beat(f"life {life}"))
                assert _next(sub).body.detail["mark"] == f"life {life}"
    assert sub.stats["restart"].duplicates == 0


@pytest.mark.parametrize(
    ("frames", "topic"),
    [
        ([b"malformed\0", b"\xc1", b"\x80"], "malformed"),
        ([b"malformed\0", msgspec.msgpack.encode(["x", 1, "s"]), b"\x80"], "malformed"),
        (
            [b"malformed\0", msgspec.msgpack.encode(["health.heartbeat", 1, "s"]), b"\xc1"],
            "malformed",
        ),
        ([b"malformed\0", msgspec.msgpack.encode(["health.heartbeat", 1, "s"])], "malformed"),
        ([b"malformed-no-nul", b"\x90", b"\x80"], "?"),
        ([b"malformed\xff\0", b"\x90", b"\x80"], "?"),
    ],
    ids=["garbage-envelope", "unknown-schema", "garbage-body", "two-frames", "no-nul", "utf8"],
)
def test_malformed_messages_are_counted_not_raised(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str, frames: list[bytes], topic: str
) -> None:
    """A malformed message is counted under its topic (or `?`) and skipped."""
    endpoint = f"ipc://{ipc_dir}/bus"
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["malformed"], prefix=True) as sub,
    ):
        _sync(pub, sub, "malformed/sync")
        pub.publish_raw(frames)
        pub.publish("malformed/after", _beat("after"))
        got = _next(sub)
    assert got.topic == "malformed/after"
    assert sub.stats[topic].malformed == 1


def test_zero_copy_buffers_arrive_intact(ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str) -> None:
    """Tensor buffers sent without copying arrive byte for byte after the body."""
    endpoint = f"ipc://{ipc_dir}/bus"
    image = np.arange(480 * 640 * 3, dtype=np.uint32).astype(np.uint8).reshape(480, 640, 3)
    extra = bytes(range(256)) * 4
    with (
        Publisher(ctx, endpoint, source="pub", bind=True) as pub,
        Subscriber(ctx, endpoint, ["tensor", SYNC]) as sub,
    ):
        _sync(pub, sub)
        pub.publish("tensor", _beat(), buffers=[memoryview(image), extra])
        got = _next(sub)
        assert len(got.buffers) == 2
        received = np.frombuffer(got.buffers[0].buffer, dtype=np.uint8).reshape(image.shape)
        assert np.array_equal(received, image)
        assert got.buffers[1].bytes == extra
    assert got.body == _beat()


def _run_proxy(
    ctx: zmq.Context[zmq.Socket[bytes]],
    frontend: str,
    backend: str,
    ready: threading.Event,
    stop: threading.Event,
) -> None:
    """The proxy loop; its sockets are made, used and closed in this thread only."""
    with Proxy(ctx, frontend, backend, latched=LATCHED_TOPICS) as proxy:
        poller = zmq.Poller()
        proxy.register(poller)
        ready.set()
        while not stop.is_set():
            proxy.handle(dict(poller.poll(POLL_MS)))


@pytest.fixture
def proxy_endpoints(ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str) -> Iterator[tuple[str, str]]:
    """A running proxy in a thread owned by the test: (frontend, backend)."""
    frontend, backend = f"ipc://{ipc_dir}/pub", f"ipc://{ipc_dir}/sub"
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=_run_proxy, args=(ctx, frontend, backend, ready, stop), daemon=True
    )
    thread.start()
    try:
        assert ready.wait(WAIT_S), "proxy did not start"
        yield frontend, backend
    finally:
        stop.set()
        thread.join(WAIT_S)
        assert not thread.is_alive()


def _state(state: SafetyState) -> StateChange:
    return StateChange(state=state, previous=SafetyState.NORMAL, cause="test", since_ns=1)


def test_proxy_forwards_publications(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy_endpoints: tuple[str, str]
) -> None:
    """A message published to the proxy's frontend reaches a backend subscriber."""
    frontend, backend = proxy_endpoints
    with (
        Publisher(ctx, frontend, source="pub") as pub,
        Subscriber(ctx, backend, [SYNC, Topic.HEARTBEAT]) as sub,
    ):
        _sync(pub, sub)
        pub.publish(Topic.HEARTBEAT, _beat("through"))
        got = _next(sub)
    assert (got.topic, got.body) == (Topic.HEARTBEAT, _beat("through"))


def test_late_joiner_gets_the_latched_value_at_once(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy_endpoints: tuple[str, str]
) -> None:
    """A subscriber joining after a latched topic was published receives its last value."""
    frontend, backend = proxy_endpoints
    with (
        Publisher(ctx, frontend, source="watchdog") as pub,
        Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as early,
    ):
        _sync(pub, early, Topic.SAFETY_STATE)
        seq = pub.publish(Topic.SAFETY_STATE, _state(SafetyState.DEGRADED))
        assert _next(early).envelope.seq == seq
        with Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as late:
            got = _next(late)
    assert got.topic == Topic.SAFETY_STATE
    assert got.envelope.seq == seq
    assert got.body == _state(SafetyState.DEGRADED)


def test_latched_resend_is_a_duplicate_for_earlier_subscribers(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy_endpoints: tuple[str, str]
) -> None:
    """A subscriber that had the latched value drops the proxy's re-send as a duplicate."""
    frontend, backend = proxy_endpoints
    with (
        Publisher(ctx, frontend, source="watchdog") as pub,
        Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as early,
    ):
        _sync(pub, early, Topic.SAFETY_STATE)
        pub.publish(Topic.SAFETY_STATE, _state(SafetyState.RECOVERING))
        _next(early)
        with Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as late:
            _next(late)
        stats = early.stats[Topic.SAFETY_STATE]
        _wait_for(lambda: stats.duplicates == 1, early)
    assert stats.lost == 0


def test_proxy_latches_only_latched_topics(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy_endpoints: tuple[str, str]
) -> None:
    """A late joiner gets no cached copy of a topic that is not latched."""
    assert Topic.HEARTBEAT not in LATCHED_TOPICS
    frontend, backend = proxy_endpoints
    with (
        Publisher(ctx, frontend, source="node") as pub,
        Subscriber(ctx, backend, [Topic.SAFETY_STATE, Topic.HEARTBEAT]) as early,
    ):
        # Each topic is synced on its own: a PUB applies a subscription only when it next
        # processes its input, so one topic arriving does not prove the other has.
        _sync(pub, early, Topic.SAFETY_STATE)
        _sync(pub, early, Topic.HEARTBEAT)
        old = pub.publish(Topic.HEARTBEAT, _beat("old"))
        assert _next(early).envelope.seq == old
        with Subscriber(ctx, backend, [Topic.HEARTBEAT, Topic.SAFETY_STATE]) as late:
            # The latched value proves both subscriptions reached the proxy.
            assert _next(late).topic == Topic.SAFETY_STATE
            pub.publish(Topic.HEARTBEAT, _beat("new"))
            got = _next(late)
    assert (got.topic, got.envelope.seq) == (Topic.HEARTBEAT, old + 1)


def test_proxy_keeps_the_frame_of_a_latched_topic() -> None:
    """The proxy matches latched topics by their NUL-terminated topic frame."""
    assert topic_frame(Topic.MODEL_ACTIVE) == Topic.MODEL_ACTIVE.encode() + b"\0"


def test_decode_counts_frames_read_elsewhere(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """`decode` of frames a caller polled itself counts a malformed message and returns None."""
    with Subscriber(ctx, f"ipc://{ipc_dir}/bus", ["t"]) as sub:
        assert sub.decode([zmq.Frame(b"t\0"), zmq.Frame(b"\xc1"), zmq.Frame(b"\x80")]) is None
    assert sub.stats["t"].malformed == 1


def test_deeply_nested_body_is_counted_as_malformed(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """A body nested deeper than the decoder's recursion limit is malformed, not a crash."""
    envelope = msgspec.msgpack.encode(["health.heartbeat", 1, "s"])
    nested = b"\x91" * 100_000 + b"\xc0"
    with Subscriber(ctx, f"ipc://{ipc_dir}/bus", ["t"], typed=False) as sub:
        frames = [zmq.Frame(b"t\0"), zmq.Frame(envelope), zmq.Frame(nested)]
        assert sub.decode(frames) is None
    assert sub.stats["t"].malformed == 1


def _state_of(sub: Subscriber) -> Received:
    """The next message on the safety state topic (warm-ups of other syncs are skipped)."""
    while (got := _next(sub)).topic != Topic.SAFETY_STATE:
        pass
    return got


def _replayed(pub: Publisher, topic: str, body: StateChange, replay: int = 77) -> None:
    """Publish `body` as `vigil bag play` would: its envelope marked with a replay id."""
    frames = pub.encode(topic, body)
    envelope = Codec().decode_envelope(bytes(frames[1]))
    marked = msgspec.structs.replace(envelope, replay=replay)
    pub.publish_raw([frames[0], Codec().encode(marked), *frames[2:]])


def test_a_replayed_value_never_replaces_a_latched_live_one(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy_endpoints: tuple[str, str]
) -> None:
    """After a live state and a replayed one, a late joiner gets the live state."""
    frontend, backend = proxy_endpoints
    with (
        Publisher(ctx, frontend, source="watchdog") as live,
        Publisher(ctx, frontend, source="player") as player,
        Subscriber(ctx, backend, [SYNC, Topic.SAFETY_STATE]) as early,
    ):
        _sync(live, early)
        _sync(player, early)
        live.publish(Topic.SAFETY_STATE, _state(SafetyState.DEGRADED))
        assert _state_of(early).envelope.replay == 0
        _replayed(player, Topic.SAFETY_STATE, _state(SafetyState.SAFE_STOP))
        assert _state_of(early).envelope.replay == 77  # forwarded, as every message is
        with Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as late:
            got = _state_of(late)
    assert got.envelope.replay == 0
    assert got.body == _state(SafetyState.DEGRADED)


def test_a_replayed_value_is_latched_until_a_live_one_comes(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy_endpoints: tuple[str, str]
) -> None:
    """Where no live value is kept, a replayed one is (a replay into a bare bus still latches);
    the next live value replaces it."""
    frontend, backend = proxy_endpoints
    with (
        Publisher(ctx, frontend, source="watchdog") as live,
        Publisher(ctx, frontend, source="player") as player,
        Subscriber(ctx, backend, [SYNC, Topic.SAFETY_STATE]) as early,
    ):
        _sync(live, early)
        _sync(player, early)
        _replayed(player, Topic.SAFETY_STATE, _state(SafetyState.SAFE_STOP))
        _state_of(early)
        with Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as late:
            assert _state_of(late).envelope.replay == 77
        live.publish(Topic.SAFETY_STATE, _state(SafetyState.NORMAL))
        _state_of(early)
        with Subscriber(ctx, backend, [Topic.SAFETY_STATE]) as later:
            got = _state_of(later)
    assert (got.envelope.replay, got.body) == (0, _state(SafetyState.NORMAL))


def test_replayed_messages_are_skipped_where_asked_and_kept_out_of_sequence_counting(
    ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: str
) -> None:
    """A subscriber skipping replays only counts them; one taking them does not let a replay
    of the live publisher's own session (later numbers) make its next message a duplicate."""
    endpoint = f"ipc://{ipc_dir}/replay"
    codec = Codec()
    with (
        Publisher(ctx, endpoint, source="watchdog", bind=True) as pub,
        Subscriber(ctx, endpoint, [SYNC, Topic.SAFETY_STATE]) as taking,
        Subscriber(ctx, endpoint, [SYNC, Topic.SAFETY_STATE], skip_replayed=True) as skipping,
    ):
        _sync(pub, taking)
        _sync(pub, skipping)
        pub.publish(Topic.SAFETY_STATE, _state(SafetyState.NORMAL))
        first = _state_of(taking)
        _state_of(skipping)
        recorded_later = msgspec.structs.replace(
            first.envelope, seq=first.envelope.seq + 5, replay=77
        )
        body = codec.encode(_state(SafetyState.SAFE_STOP))
        pub.publish_raw([topic_frame(Topic.SAFETY_STATE), codec.encode(recorded_later), body])
        pub.publish(Topic.SAFETY_STATE, _state(SafetyState.DEGRADED))
        replayed, live = _state_of(taking), _state_of(taking)
        skipped_to = _state_of(skipping)
    assert (replayed.envelope.replay, live.envelope.replay) == (77, 0)
    assert live.body == _state(SafetyState.DEGRADED)
    assert skipped_to.body == _state(SafetyState.DEGRADED)
    assert skipping.stats[Topic.SAFETY_STATE].replayed == 1
    assert taking.stats[Topic.SAFETY_STATE].lost == 0
