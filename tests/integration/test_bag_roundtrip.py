"""Record from and replay onto a real proxy over ipc: frames survive byte for byte."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import zmq
from click.testing import CliRunner
from mcap.reader import make_reader
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope
from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir
from vigil.schemas import DiagnosticEvent, Heartbeat, LogRecord, Topic
from vigil.tools.bag import (
    BagReader,
    BagWriter,
    NoSubscribers,
    PlayConfig,
    Player,
    RecordConfig,
    Recorder,
    RecordStats,
    bag_info,
)
from vigil.tools.bag_cmd import _LiveLine, _signals
from vigil.tools.cli import cli

WAIT_S = 10.0


@dataclass
class Bus:
    run: RunDir
    ctx: zmq.Context[zmq.Socket[bytes]]


def _proxy_loop(bus: Bus, ready: threading.Event, stop: socket.socket) -> None:
    with Proxy(bus.ctx, bus.run.pub, bus.run.sub) as proxy:
        poller = zmq.Poller()
        proxy.register(poller)
        poller.register(stop.fileno(), zmq.POLLIN)
        ready.set()
        while True:
            events = dict(poller.poll(1000))
            if stop.fileno() in events:
                return
            proxy.handle(events)


@pytest.fixture
def bus() -> Iterator[Bus]:
    """A proxy thread on ipc sockets in a short private directory."""
    with tempfile.TemporaryDirectory(prefix="vb") as tmp, zmq.Context() as ctx:
        b = Bus(RunDir(Path(tmp) / "run"), ctx)
        ready = threading.Event()
        stop_r, stop_w = socket.socketpair()
        with stop_r, stop_w:
            thread = threading.Thread(target=_proxy_loop, args=(b, ready, stop_r), daemon=True)
            thread.start()
            assert ready.wait(WAIT_S)
            try:
                yield b
            finally:
                stop_w.send(b"q")
                thread.join(WAIT_S)


def _beat(i: int) -> Heartbeat:
    return Heartbeat(node="src", instance=0, pid=i, period_ms=100, kind="test")


class _Running:
    """A recorder on its own thread, joined on exit."""

    def __init__(self, bus: Bus, config: RecordConfig) -> None:
        self.recorder = Recorder(config, bus.run.sub, metadata={"vigil.host": {"hostname": "t"}})
        self.result: list[RecordStats] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(self.recorder.run(bus.ctx)), daemon=True
        )

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self.recorder

    def __exit__(self, *exc: object) -> None:
        self.recorder.request_stop()
        self.thread.join(WAIT_S)
        self.recorder.close()


def _publish_until_recorded(pub: Publisher, recorder: Recorder, topic: str) -> int:
    """Publish heartbeats until the recorder holds one; the sequence number it saw last."""
    deadline = time.monotonic() + WAIT_S
    seq = 0
    while time.monotonic() < deadline:
        seq = pub.publish(topic, _beat(seq))
        if recorder.wait_for(lambda s: s.recorded >= 1, 0.02):
            return seq
    raise AssertionError("the recorder never received a message")


def _wait(recorder: Recorder, predicate: Callable[[RecordStats], bool]) -> None:
    assert recorder.wait_for(predicate, WAIT_S), recorder.stats()


def _sentinel(pub: Publisher, recorder: Recorder) -> None:
    """Publish a diagnostic and wait for it: one publisher's messages arrive in order, so
    everything published before it is recorded by then."""
    before = recorder.stats().topics.get(Topic.DIAGNOSTIC, 0)
    pub.publish(
        Topic.DIAGNOSTIC,
        DiagnosticEvent(code="DIA-2047", severity="error", node="src", message="marker"),
    )
    _wait(recorder, lambda s: s.topics.get(Topic.DIAGNOSTIC, 0) > before)


def test_recording_keeps_every_frame_byte_for_byte(bus: Bus, tmp_path: Path) -> None:
    """Every message published after the recorder joined is in the bag with its exact frames."""
    out = tmp_path / "rec.mcap"
    config = RecordConfig(output=str(out), topics=(Topic.HEARTBEAT, Topic.DIAGNOSTIC))
    sent: dict[int, list[bytes]] = {}
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        warm = _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        for i in range(500):
            seq = pub.publish(Topic.HEARTBEAT, _beat(1000 + i), buffers=[bytes([i % 256]) * 64])
            sent[seq] = [bytes([i % 256]) * 64]
        _sentinel(pub, recorder)
        assert recorder.stats().lost == 0
    with BagReader(out) as reader:
        got = {
            m.envelope.seq: m for m in reader.messages([Topic.HEARTBEAT]) if m.envelope.seq > warm
        }
        assert reader.complete
    assert sorted(got) == sorted(sent)
    for seq, buffers in sent.items():
        message = got[seq]
        assert message.buffers == buffers
        assert message.body["pid"] == 1000 + seq - warm - 1
        assert message.publish_time_ns == message.envelope.stamp_ns


def test_recording_stores_host_metadata_and_counts(bus: Bus, tmp_path: Path) -> None:
    """A finished bag says which host recorded it and how many messages each topic holds."""
    out = tmp_path / "meta.mcap"
    config = RecordConfig(output=str(out), all_topics=True, exclude=("^log/",))
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        pub.publish(Topic.LOG, LogRecord(level="info", node="src", event="skipped"))
        _sentinel(pub, recorder)
        counts = recorder.stats().topics
    info = bag_info(out)
    assert info.metadata["vigil.host"] == {"hostname": "t"}
    assert info.metadata["vigil.recording"]["exclude"] == '["^log/"]'
    assert info.complete
    assert {t.topic: t.messages for t in info.topics} == counts
    assert Topic.LOG not in counts


def test_recording_splits_by_size(bus: Bus, tmp_path: Path) -> None:
    """With a size limit the recording continues in numbered files, none far over the limit."""
    config = RecordConfig(
        output=str(tmp_path / "split.mcap"),
        topics=(Topic.HEARTBEAT, Topic.DIAGNOSTIC),
        max_bag_size=20_000,
        chunk_size=4_000,
    )
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        for i in range(2000):
            pub.publish(Topic.HEARTBEAT, _beat(i))
        _sentinel(pub, recorder)
        total = recorder.stats().recorded
    files = sorted(tmp_path.glob("split_*.mcap"))
    assert len(files) > 2
    infos = [bag_info(f) for f in files]
    assert sum(i.messages for i in infos) == total
    assert all(i.complete for i in infos)
    # A file is cut after the chunk that crosses the limit, so it overshoots by under a chunk.
    assert all(i.size_bytes < 20_000 + 8_000 for i in infos)


def test_snapshot_on_topic_writes_the_ring(bus: Bus, tmp_path: Path) -> None:
    """In snapshot mode a message on the trigger topic writes the ring, trigger included."""
    config = RecordConfig(
        output=str(tmp_path / "snap.mcap"),
        topics=(Topic.HEARTBEAT, Topic.DIAGNOSTIC),
        snapshot=True,
        snapshot_on=(Topic.DIAGNOSTIC,),
    )
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        for i in range(20):
            pub.publish(Topic.HEARTBEAT, _beat(i))
        assert not list(tmp_path.glob("snap_*.mcap"))
        _sentinel(pub, recorder)
        _wait(recorder, lambda s: s.snapshots == 1)
        recorded = recorder.stats().recorded
    (snap,) = tmp_path.glob("snap_*.mcap")
    with BagReader(snap) as reader:
        topics = [m.topic for m in reader.messages()]
    assert len(topics) == recorded
    assert topics[-1] == Topic.DIAGNOSTIC


def _synthetic_bag(path: Path, count: int, step_ns: int) -> list[list[bytes]]:
    """A bag of heartbeats `step_ns` apart; the frames each message must be replayed as."""
    frames: list[list[bytes]] = []
    codec = Codec()
    with BagWriter(path, chunk_size=8_000) as writer:
        for i in range(count):
            env = codec.encode(
                Envelope(schema="health.heartbeat", seq=i + 1, source="bag", session=7)
            )
            body = codec.encode(_beat(i))
            writer.add_bus_message(
                Topic.HEARTBEAT, env, body, [b"t" * i], log_time_ns=10**18 + i * step_ns
            )
            frames.append([Topic.HEARTBEAT.encode() + b"\0", env, body, b"t" * i])
    return frames


def _marked(frames: list[bytes], replay: int) -> list[bytes]:
    """Recorded frames as play sends them: the envelope marked with the replay's id."""
    codec = Codec()
    envelope = msgspec.structs.replace(codec.decode_envelope(frames[1]), replay=replay)
    return [frames[0], codec.encode(envelope), *frames[2:]]


def test_play_republishes_recorded_frames_after_subscribers_join(bus: Bus, tmp_path: Path) -> None:
    """Play waits for a subscriber, then every message arrives with its recorded frames, the
    envelope only marked with the replay's id."""
    path = tmp_path / "play.mcap"
    expected = _synthetic_bag(path, 300, 1_000_000)
    with Subscriber(bus.ctx, bus.run.sub, [Topic.HEARTBEAT], typed=False) as sub:
        with Player(PlayConfig(wait_for_subscribers=True), [str(path)], bus.run.pub) as player:
            report = player.run(bus.ctx)
        got = []
        while len(got) < len(expected):
            received = sub.recv(timeout_ms=int(WAIT_S * 1000))
            assert received is not None, f"only {len(got)} of {len(expected)} arrived"
            got.append([bytes(f) for f in received.frames])
    assert got == [_marked(frames, player.replay) for frames in expected]
    assert report.messages == 300 and report.replay == player.replay != 0
    print(f"play --rate 1, 1 kHz: {report.summary()}")


def test_play_remaps_topics_and_honours_offset_and_duration(bus: Bus, tmp_path: Path) -> None:
    """Remapped, offset and cut: only the window's messages arrive, on the new topic."""
    path = tmp_path / "window.mcap"
    expected = _synthetic_bag(path, 100, 1_000_000)
    config = PlayConfig(
        rate=4.0,
        start_offset_s=0.020,
        duration_s=0.0095,
        remap={Topic.HEARTBEAT: "replay/heartbeat"},
        wait_for_subscribers=True,
    )
    with Subscriber(bus.ctx, bus.run.sub, ["replay/heartbeat"], typed=False) as sub:
        with Player(config, [str(path)], bus.run.pub) as player:
            report = player.run(bus.ctx)
        got = []
        for _ in range(report.messages):
            received = sub.recv(timeout_ms=int(WAIT_S * 1000))
            assert received is not None
            got.append(received)
    assert [r.envelope.seq for r in got] == list(range(21, 31))
    assert [bytes(f) for f in got[0].frames[1:]] == _marked(expected[20], player.replay)[1:]


def test_play_loop_renews_the_session_so_passes_are_not_duplicates(
    bus: Bus, tmp_path: Path
) -> None:
    """Each looped pass arrives in full: receivers see a new session, not duplicates."""
    path = tmp_path / "loop.mcap"
    _synthetic_bag(path, 5, 100_000)
    with Subscriber(bus.ctx, bus.run.sub, [Topic.HEARTBEAT], typed=False) as sub:
        player = Player(PlayConfig(loop=True, wait_for_subscribers=True), [str(path)], bus.run.pub)
        with player:
            seen: list[int] = []

            def stop_after_three_passes(done: int, span: int) -> None:
                seen.append(done)
                if len(seen) == 15:
                    player.request_stop()

            report = player.run(bus.ctx, progress=stop_after_three_passes)
        sessions = set()
        for _ in range(report.messages):
            received = sub.recv(timeout_ms=int(WAIT_S * 1000))
            assert received is not None
            sessions.add(received.envelope.session)
    assert report.messages >= 15
    assert len(sessions) == report.loops
    assert sub.stats[Topic.HEARTBEAT].duplicates == 0


def test_play_without_subscribers_times_out_with_a_typed_error(bus: Bus, tmp_path: Path) -> None:
    """Waiting for subscribers that never come ends in NoSubscribers naming the topics."""
    path = tmp_path / "lonely.mcap"
    _synthetic_bag(path, 3, 1_000)
    config = PlayConfig(wait_for_subscribers=True, wait_timeout_s=0.2)
    with Player(config, [str(path)], bus.run.pub) as player, pytest.raises(NoSubscribers) as err:
        player.run(bus.ctx)
    assert err.value.topics == [Topic.HEARTBEAT]


def test_json_recording_opens_in_the_mcap_reader_and_plays_back(bus: Bus, tmp_path: Path) -> None:
    """`record --encoding json` writes what the official mcap reader decodes as JSON, and
    `play` republishes it with the recorded frames."""
    out = tmp_path / "rec.json.mcap"
    config = RecordConfig(
        output=str(out), topics=(Topic.HEARTBEAT, Topic.DIAGNOSTIC), encoding="json"
    )
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        warm = _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        for i in range(20):
            pub.publish(Topic.HEARTBEAT, _beat(100 + i), buffers=[bytes([i]) * 8])
        _sentinel(pub, recorder)
    with out.open("rb") as f:
        decoded = [
            (channel.message_encoding, channel.topic, json.loads(message.data))
            for _, channel, message in make_reader(f).iter_messages()
        ]
    beats = [d for enc, topic, d in decoded if topic == Topic.HEARTBEAT and d["envelope"][1] > warm]
    assert {enc for enc, _, _ in decoded} == {"json"}
    assert [b["body"]["pid"] for b in beats] == list(range(100, 120))
    assert base64.b64decode(beats[3]["buffers"][0]) == bytes([3]) * 8
    with BagReader(out) as reader:
        expected = [m.frames() for m in reader.messages([Topic.HEARTBEAT])]
    with Subscriber(bus.ctx, bus.run.sub, [Topic.HEARTBEAT], typed=False) as sub:
        config = PlayConfig(topics=(Topic.HEARTBEAT,), wait_for_subscribers=True)
        with Player(config, [str(out)], bus.run.pub) as player:
            player.run(bus.ctx)
        got = []
        while len(got) < len(expected):
            received = sub.recv(timeout_ms=int(WAIT_S * 1000))
            assert received is not None, f"only {len(got)} of {len(expected)} arrived"
            got.append([bytes(f) for f in received.frames])
    assert got == [_marked(frames, player.replay) for frames in expected]


_REPORT = re.compile(
    r"(?P<n>\d+) messages in (?P<s>[\d.]+) s .*lateness p50 (?P<p50>[\d.]+) us, "
    r"p99 (?P<p99>[\d.]+) us, max (?P<max>[\d.]+) us"
)


def test_play_rate_2_takes_half_the_span_with_bounded_lateness(bus: Bus, tmp_path: Path) -> None:
    """`bag play --rate 2` of a 2 s recording follows the doubled schedule: never sooner (no
    message leaves before its time), and its median lateness far below the half second an
    ignored rate would show. Tail lateness is the host's, measured by the bench, not here."""
    path = tmp_path / "paced.mcap"
    _synthetic_bag(path, 201, 10_000_000)  # 200 steps of 10 ms: a 2.0 s span
    with Subscriber(bus.ctx, bus.run.sub, [Topic.HEARTBEAT], typed=False) as sub:
        shown = CliRunner().invoke(
            cli,
            [
                *("bag", "play", str(path), "--rate", "2", "--endpoint", bus.run.pub, "-q"),
                *("--wait-for-subscribers", "--spin-us", "2000"),
            ],
        )
        assert shown.exit_code == 0, shown.output
        got = 0
        while got < 201:
            assert sub.recv(timeout_ms=int(WAIT_S * 1000)) is not None, f"{got} of 201 arrived"
            got += 1
    report = _REPORT.search(" ".join(shown.output.split()))  # the terminal wraps the line
    assert report is not None, shown.output
    assert int(report["n"]) == 201
    assert float(report["s"]) >= 0.995
    # At rate 1 the message due at t would leave at 2t: half a second late at the median.
    assert float(report["p50"]) < 250_000


def test_live_line_shows_the_drops_the_publishers_sequence_reveals(
    bus: Bus, tmp_path: Path
) -> None:
    """Messages missing from a publisher's sequence are counted as drops, and the recorder's
    live line shows them, in red."""
    lines: list[Text] = []
    shown = threading.Condition()

    class Shown(Live):
        """A live display that also keeps each line it is given."""

        def update(self, renderable: RenderableType, *, refresh: bool = False) -> None:
            super().update(renderable, refresh=refresh)
            with shown:
                assert isinstance(renderable, Text)
                lines.append(renderable)
                shown.notify_all()

    console = Console(file=io.StringIO(), width=200, color_system=None)
    config = RecordConfig(output=str(tmp_path / "drops.mcap"), topics=(Topic.HEARTBEAT,))
    recorder = Recorder(config, bus.run.sub)
    with (
        Shown(Text("waiting"), console=console, auto_refresh=False) as live,
        Publisher(bus.ctx, bus.run.pub, source="src") as pub,
    ):
        line = _LiveLine(live)
        thread = threading.Thread(target=lambda: recorder.run(bus.ctx, report=line))
        thread.start()
        try:
            _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
            pub.encode(Topic.HEARTBEAT, _beat(1))  # numbered, never sent: two drops
            pub.encode(Topic.HEARTBEAT, _beat(2))
            pub.publish(Topic.HEARTBEAT, _beat(3))
            with shown:
                ok = shown.wait_for(lambda: bool(lines) and "drops 2" in str(lines[-1]), WAIT_S)
                assert ok, [str(x) for x in lines[-3:]]
        finally:
            recorder.request_stop()
            thread.join(WAIT_S)
            recorder.close()
    last = lines[-1]
    start = str(last).index("drops 2")
    assert any(
        span.start <= start < span.end and span.style == "bold red" for span in last.spans
    ), last.spans
    assert "drops 2" in console.file.getvalue()  # type: ignore[attr-defined]


def test_recording_splits_by_duration(bus: Bus, tmp_path: Path) -> None:
    """With -d the recording continues in numbered files, one per period, each a complete
    bag, in time order, together holding every message."""
    config = RecordConfig(
        output=str(tmp_path / "timed.mcap"),
        topics=(Topic.HEARTBEAT, Topic.DIAGNOSTIC),
        max_bag_duration_s=0.2,
    )
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        i = 0
        while not recorder.wait_for(lambda s: len(s.files) >= 3, 0.01):
            pub.publish(Topic.HEARTBEAT, _beat(i))
            i += 1
        _sentinel(pub, recorder)
        total = recorder.stats().recorded
    files = sorted(tmp_path.glob("timed_*.mcap"))
    assert [f.name for f in files[:3]] == ["timed_0000.mcap", "timed_0001.mcap", "timed_0002.mcap"]
    infos = [bag_info(f) for f in files]
    assert all(i.complete for i in infos)
    assert sum(i.messages for i in infos) == total
    spans = [(i.start_ns, i.end_ns) for i in infos if i.messages]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_snapshot_is_written_on_sigusr1(bus: Bus, tmp_path: Path) -> None:
    """In snapshot mode, SIGUSR1 (through the handler `bag record` installs) writes the ring
    to a numbered file; nothing is written before."""
    config = RecordConfig(
        output=str(tmp_path / "ring.mcap"), topics=(Topic.HEARTBEAT,), snapshot=True
    )
    with _Running(bus, config) as recorder, Publisher(bus.ctx, bus.run.pub, source="src") as pub:
        _publish_until_recorded(pub, recorder, Topic.HEARTBEAT)
        for i in range(10):
            pub.publish(Topic.HEARTBEAT, _beat(i))
        _wait(recorder, lambda s: s.recorded >= 11)
        assert not list(tmp_path.glob("ring_*.mcap"))
        with _signals({signal.SIGUSR1: recorder.request_snapshot}):
            os.kill(os.getpid(), signal.SIGUSR1)
            _wait(recorder, lambda s: s.snapshots == 1)
        recorded = recorder.stats().recorded
    (ring,) = tmp_path.glob("ring_*.mcap")
    assert ring.name == "ring_0000.mcap"
    assert bag_info(ring).messages == recorded
