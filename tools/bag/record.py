"""Recording bus traffic to bags: topic selection, split files, snapshot mode and drop counts."""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Protocol

import msgspec
import zmq

from vigil.bus.closing import Closing
from vigil.bus.curve import CurveConfig
from vigil.bus.pubsub import Received, Subscriber
from vigil.bus.rundir import RunDir
from vigil.schemas import ModelAnnouncement, Topic
from vigil.tools.bag._foxglove import ImageFormat
from vigil.tools.bag._mcap import (
    BagWriter,
    Compression,
    Encoding,
    encode_record,
    output_path,
    vigil_version,
)

__all__ = [
    "RecordConfig",
    "RecordStats",
    "Recorder",
    "TopicFilter",
    "host_metadata",
    "launch_metadata",
]

# Messages taken from the socket per poller wake-up before timers are looked at.
_BURST: Final = 512
# Overhead an MCAP message record adds to its data (opcode, length, ids, times).
_RECORD_OVERHEAD: Final = 31


class RecordConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `vigil bag record` records and how it cuts its files."""

    output: str
    topics: tuple[str, ...] = ()
    all_topics: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    chunk_size: Annotated[int, msgspec.Meta(gt=0)] = 1 << 20
    # A chunk is closed at least this often, so a crash loses at most this much traffic.
    flush_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    compression: Compression = "zstd"
    # "json" writes what Foxglove opens: JSON records plus images and detections in its schemas.
    encoding: Encoding = "msgpack"
    images: ImageFormat = "raw"
    fsync: bool = False
    max_bag_size: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_bag_duration_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    snapshot: bool = False
    snapshot_duration_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    snapshot_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 256 << 20
    snapshot_on: tuple[str, ...] = ()
    hwm: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    duration_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Stop after this long; 0 records until `request_stop()`."""

    def __post_init__(self) -> None:
        if not (self.topics or self.all_topics or self.include):
            raise ValueError("choose topics: names, all_topics or an include pattern")
        if self.snapshot_on and not self.snapshot:
            raise ValueError("snapshot_on needs snapshot mode")
        if self.snapshot and (self.max_bag_size or self.max_bag_duration_s):
            raise ValueError("snapshot mode writes one file per trigger: it does not split")
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad pattern {pattern!r}: {exc}") from exc

    @property
    def numbered(self) -> bool:
        """Whether the recording may span several files (they are then numbered)."""
        return self.snapshot or bool(self.max_bag_size or self.max_bag_duration_s)


class TopicFilter:
    """Which topics a recording keeps: exact names, `include` regexes, minus `exclude` ones.

    Decisions are cached per topic, so the per-message cost is one dict lookup.
    """

    def __init__(
        self,
        topics: Iterable[str] = (),
        *,
        all_topics: bool = False,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> None:
        self._names = frozenset(topics)
        self._all = all_topics
        self._include = [re.compile(p) for p in include]
        self._exclude = [re.compile(p) for p in exclude]
        self._cache: dict[str, bool] = {}

    def __call__(self, topic: str) -> bool:
        """Whether `topic` is recorded."""
        keep = self._cache.get(topic)
        if keep is None:
            keep = self._cache[topic] = self._decide(topic)
        return keep

    def _decide(self, topic: str) -> bool:
        if any(p.search(topic) for p in self._exclude):
            return False
        return self._all or topic in self._names or any(p.search(topic) for p in self._include)

    def subscriptions(self, extra: Iterable[str] = ()) -> tuple[list[str], bool]:
        """What to subscribe to: (exact topic names, False) or ([""], True) for every topic.

        Exact names let the publishers filter; patterns need every topic on the socket.
        """
        if self._all or self._include:
            return [""], True
        return sorted(self._names | set(extra)), False


@dataclass(slots=True)
class RecordStats:
    """What a recorder has done so far (a copy; safe to read from another thread)."""

    received: int = 0
    recorded: int = 0
    bytes: int = 0
    lost: int = 0
    malformed: int = 0
    files: list[str] = field(default_factory=list)
    snapshots: int = 0
    topics: dict[str, int] = field(default_factory=dict)


def host_metadata() -> dict[str, str]:
    """Host facts stored in every bag, so a recording says where it came from."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count() or 0),
        "user": user,
        "vigil": vigil_version(),
    }


def launch_metadata(run_dir: RunDir) -> dict[str, str]:
    """The launch file (path and text) and node list of a run, or {} when it has no graph."""
    try:
        graph = run_dir.read_graph()
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    meta = {
        "launch_file": graph.launch_file,
        "started_ns": str(graph.started_ns),
        "nodes": json.dumps(
            [{"name": n.name, "kind": n.kind, "instance": n.instance} for n in graph.nodes]
        ),
        "topics": json.dumps(graph.topics, sort_keys=True),
    }
    try:
        meta["launch"] = Path(graph.launch_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        meta["launch"] = ""
    return meta


class _Sink(Protocol):
    snapshots: int

    def add(self, topic: str, data: bytes, log_ns: int, publish_ns: int, seq: int) -> None: ...

    def tick(self, now_ns: int) -> None: ...

    def model(self, meta: dict[str, str]) -> None: ...

    def trigger(self) -> None: ...

    def close(self) -> None: ...


class _Files:
    """Opens the numbered files of one recording, each with the recording's metadata."""

    def __init__(self, config: RecordConfig, metadata: dict[str, dict[str, str]]) -> None:
        self._config = config
        self._metadata = metadata
        self.models: dict[str, dict[str, str]] = {}
        self.opened: list[str] = []

    def open(self) -> BagWriter:
        path = output_path(self._config.output, len(self.opened), numbered=self._config.numbered)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = BagWriter(
            path,
            chunk_size=self._config.chunk_size,
            compression=self._config.compression,
            fsync=self._config.fsync,
            encoding=self._config.encoding,
            images=self._config.images,
        )
        self.opened.append(str(path))
        for name, data in self._metadata.items():
            writer.add_metadata(name, data)
        for meta in self.models.values():
            writer.add_metadata("vigil.model", meta)
        return writer


class _SplitSink:
    """Continuous recording, cut into a new file by size or duration."""

    def __init__(self, config: RecordConfig, files: _Files, now_ns: int) -> None:
        self._config = config
        self._files = files
        self._max_size = config.max_bag_size
        self._max_ns = int(config.max_bag_duration_s * 1e9)
        self._flush_ns = int(config.flush_interval_s * 1e9)
        self._writer = files.open()
        self.snapshots = 0
        self._opened_ns = now_ns
        self._next_flush = now_ns + self._flush_ns

    def add(self, topic: str, data: bytes, log_ns: int, publish_ns: int, seq: int) -> None:
        self._writer.add(topic, data, log_time_ns=log_ns, publish_time_ns=publish_ns, sequence=seq)
        if self._max_size and self._writer.bytes_written + self._writer.pending_bytes >= (
            self._max_size
        ):
            self._rotate(log_ns)

    def tick(self, now_ns: int) -> None:
        if self._max_ns and now_ns - self._opened_ns >= self._max_ns:
            self._rotate(now_ns)
        elif now_ns >= self._next_flush:
            self._writer.flush()
            self._next_flush = now_ns + self._flush_ns

    def _rotate(self, now_ns: int) -> None:
        self._writer.finish()
        self._writer = self._files.open()
        self._opened_ns = now_ns
        self._next_flush = now_ns + self._flush_ns

    def model(self, meta: dict[str, str]) -> None:
        self._writer.add_metadata("vigil.model", meta)

    def trigger(self) -> None:
        """Continuous recordings ignore snapshot triggers."""

    def close(self) -> None:
        self._writer.finish()


class _SnapshotSink:
    """Snapshot mode: a ring of recent messages, written to a new file on each trigger."""

    def __init__(self, config: RecordConfig, files: _Files) -> None:
        self._files = files
        self._max_ns = int(config.snapshot_duration_s * 1e9)
        self._max_bytes = config.snapshot_max_bytes
        self._ring: deque[tuple[str, bytes, int, int, int]] = deque()
        self._bytes = 0
        self.snapshots = 0

    def add(self, topic: str, data: bytes, log_ns: int, publish_ns: int, seq: int) -> None:
        self._ring.append((topic, data, log_ns, publish_ns, seq))
        self._bytes += len(data) + _RECORD_OVERHEAD
        self._trim(log_ns)

    def _trim(self, now_ns: int) -> None:
        ring = self._ring
        while ring and (
            (self._max_bytes and self._bytes > self._max_bytes)
            or (self._max_ns and now_ns - ring[0][2] > self._max_ns)
        ):
            self._bytes -= len(ring.popleft()[1]) + _RECORD_OVERHEAD

    def tick(self, now_ns: int) -> None:
        self._trim(now_ns)

    def model(self, meta: dict[str, str]) -> None:
        """Model versions reach each snapshot through `_Files.models`."""

    def trigger(self) -> None:
        with self._files.open() as writer:
            for topic, data, log_ns, publish_ns, seq in self._ring:
                writer.add(
                    topic, data, log_time_ns=log_ns, publish_time_ns=publish_ns, sequence=seq
                )
        self._ring.clear()
        self._bytes = 0
        self.snapshots += 1

    def close(self) -> None:
        """What is still in the ring was never asked for: it is dropped."""
        self._ring.clear()


class Recorder(Closing):
    """Records bus traffic from the proxy into bags until asked to stop.

    `curve` holds the Curve keys for a tcp proxy (see `vigil.tools._taps.open_bus`).
    Runs in the thread that calls `run()`, which creates its own socket there. Other threads
    and signal handlers call `request_stop()` and `request_snapshot()`: each writes one byte
    to a socket pair that the recorder's poller watches, so a request wakes the loop at once.
    """

    def __init__(
        self,
        config: RecordConfig,
        endpoint: str,
        *,
        metadata: dict[str, dict[str, str]] | None = None,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
        curve: CurveConfig | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.curve = curve
        self._clock = clock
        self._monotonic = monotonic
        self._filter = TopicFilter(
            config.topics,
            all_topics=config.all_topics,
            include=config.include,
            exclude=config.exclude,
        )
        self._triggers = frozenset(config.snapshot_on)
        recording = {
            "endpoint": endpoint,
            "topics": json.dumps(list(config.topics)),
            "all_topics": str(config.all_topics).lower(),
            "include": json.dumps(list(config.include)),
            "exclude": json.dumps(list(config.exclude)),
            "mode": "snapshot" if config.snapshot else "continuous",
            "started_ns": str(clock()),
        }
        self._metadata = {"vigil.recording": recording, **(metadata or {})}
        self._stack = ExitStack()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stack.callback(self._wake_w.close)
        self._stack.callback(self._wake_r.close)
        self._wake_w.setblocking(False)
        self._stats = RecordStats()
        self._changed = threading.Condition()

    def request_stop(self) -> None:
        """Ask the recording loop to finish its files and return (thread- and signal-safe)."""
        self._poke(b"q")

    def request_snapshot(self) -> None:
        """Ask for the ring to be written now (snapshot mode; thread- and signal-safe)."""
        self._poke(b"s")

    def _poke(self, what: bytes) -> None:
        # A full pair holds unread requests already: the loop is due to wake.
        with suppress(BlockingIOError):
            self._wake_w.send(what)

    def stats(self) -> RecordStats:
        """A copy of the counters."""
        with self._changed:
            s = self._stats
            return RecordStats(
                s.received,
                s.recorded,
                s.bytes,
                s.lost,
                s.malformed,
                list(s.files),
                s.snapshots,
                dict(s.topics),
            )

    def wait_for(self, predicate: Callable[[RecordStats], bool], timeout: float) -> bool:
        """Block until `predicate(stats)` holds or `timeout` seconds pass; returns which."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._stats), timeout)

    def run(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        *,
        report: Callable[[RecordStats], None] | None = None,
        report_interval_s: float = 0.25,
    ) -> RecordStats:
        """Record until `request_stop()` or the configured duration; returns the final counters."""
        config = self.config
        extra = {Topic.MODEL_ACTIVE, *self._triggers}
        topics, prefix = self._filter.subscriptions(extra)
        files = _Files(config, self._metadata)
        now = self._monotonic()
        until = now + int(config.duration_s * 1e9) if config.duration_s else None
        report_ns = int(report_interval_s * 1e9)
        next_report = now + report_ns
        with ExitStack() as stack:
            sub = stack.enter_context(
                Subscriber(
                    ctx,
                    self.endpoint,
                    topics,
                    prefix=prefix,
                    typed=False,
                    hwm=config.hwm,
                    curve=self.curve,
                )
            )
            sink: _Sink = (
                _SnapshotSink(config, files)
                if config.snapshot
                else _SplitSink(config, files, self._clock())
            )
            stack.callback(sink.close)
            poller = zmq.Poller()
            poller.register(sub.socket, zmq.POLLIN)
            # Plain sockets are registered (and reported) by file descriptor.
            poller.register(self._wake_r.fileno(), zmq.POLLIN)
            tick_ms = max(1, int(min(config.flush_interval_s, report_interval_s) * 1000))
            running = True
            while running:
                events = dict(poller.poll(tick_ms))
                if sub.socket in events:
                    with self._changed:
                        self._drain(sub, sink, files)
                if self._wake_r.fileno() in events:
                    for request in self._wake_r.recv(64):
                        if request == ord("q"):
                            running = False
                        elif request == ord("s"):
                            sink.trigger()
                now = self._monotonic()
                if until is not None and now >= until:
                    running = False
                sink.tick(self._clock())
                self._publish_stats(sub, files, sink)
                if report is not None and now >= next_report:
                    report(self.stats())
                    next_report = now + report_ns
        self._publish_stats(sub, files, sink)
        return self.stats()

    def _drain(self, sub: Subscriber, sink: _Sink, files: _Files) -> None:
        accepts = self._filter
        clock = self._clock
        stats = self._stats
        for _ in range(_BURST):
            try:
                frames = sub.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            received = sub.decode(frames)
            if received is None:
                continue
            log_ns = clock()
            topic = received.topic
            if topic == Topic.MODEL_ACTIVE:
                self._model(received, sink, files)
            if accepts(topic):
                frames = received.frames
                data = encode_record(
                    frames[1].buffer, frames[2].buffer, [f.buffer for f in received.buffers]
                )
                sink.add(topic, data, log_ns, received.envelope.stamp_ns, received.envelope.seq)
                stats.recorded += 1
                stats.bytes += len(data)
                stats.topics[topic] = stats.topics.get(topic, 0) + 1
            if topic in self._triggers:
                sink.trigger()

    def _model(self, received: Received, sink: _Sink, files: _Files) -> None:
        try:
            announcement = msgspec.convert(received.body, ModelAnnouncement)
        except msgspec.ValidationError:
            return
        meta = {
            "name": announcement.name,
            "version": announcement.version,
            "sha256": announcement.sha256,
            "size": str(announcement.size),
            "path": announcement.path,
            "generation": str(announcement.generation),
        }
        if files.models.get(announcement.name) != meta:
            files.models[announcement.name] = meta
            sink.model(meta)

    def _publish_stats(self, sub: Subscriber, files: _Files, sink: _Sink) -> None:
        with self._changed:
            stats = self._stats
            stats.received = sum(s.messages for s in sub.stats.values())
            stats.lost = sub.lost
            stats.malformed = sum(s.malformed for s in sub.stats.values())
            stats.files = list(files.opened)
            stats.snapshots = sink.snapshots
            self._changed.notify_all()

    def close(self) -> None:
        """Close the wake-up socket pair."""
        self._stack.close()
