"""Typed publish/subscribe over the bus proxy, with per-topic sequence numbers and gap counts."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from vigil.bus.clock import wall_ns
from vigil.bus.closing import Closing
from vigil.bus.codec import Codec, parse_topic_frame, topic_frame
from vigil.bus.curve import CurveConfig, secure
from vigil.bus.envelope import Envelope, TraceContext
from vigil.schemas import Message, schema_id

__all__ = ["Publisher", "Received", "Subscriber", "TopicStats"]

_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# How often a publisher reads the subscriptions that reached it.
_HEAR_EVERY_NS = 1_000_000

Buffer = bytes | memoryview | zmq.Frame


# implements: SR-ERR-003
class Publisher(Closing):
    """Publishes typed messages on topics; numbers them per topic so receivers see gaps.

    The socket drops at its high-water mark instead of blocking: nothing that publishes may
    ever stall the request path or the heartbeat. It is an XPUB, which hears the
    subscriptions the proxy forwards: a message on a topic nobody subscribes to is neither
    encoded nor sent (ZeroMQ would drop it at this end anyway, after the encoding), so a tap
    costs the request path only while someone taps (`wanted`).
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        source: str,
        instance: int = 0,
        hwm: int = 10_000,
        bind: bool = False,
        clock: Callable[[], int] = wall_ns,
        curve: CurveConfig | None = None,
    ) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        secure(self.socket, endpoint, curve, "server" if bind else "client")
        if bind:
            self.socket.bind(endpoint)
        else:
            self.socket.connect(endpoint)
        self._source = source
        self._instance = instance
        self._clock = clock
        self._session = secrets.randbits(31)
        self._codec = Codec()
        self._seq: dict[str, int] = {}
        self._frames: dict[str, bytes] = {}
        self._schemas: dict[type[Message], str] = {}
        self._subscribed: set[bytes] = set()  # the prefixes subscribers asked for
        self._wanted: dict[str, bool] = {}  # per topic, under today's subscriptions
        self._hear_at = 0  # when the socket is next asked for (un)subscriptions

    def wanted(self, topic: str) -> bool:
        """Whether any subscriber takes `topic` now (as far as the subscriptions that reached
        this socket say: the same ones ZeroMQ filters by, read at most once a millisecond, as
        asking costs more than a small message's encoding)."""
        now = time.monotonic_ns()
        if now >= self._hear_at:
            self._hear_at = now + _HEAR_EVERY_NS
            self._hear()
        known = self._wanted.get(topic)
        if known is None:
            frame = self._frames.get(topic) or topic_frame(topic)
            known = self._wanted[topic] = any(frame.startswith(p) for p in self._subscribed)
        return known

    def _hear(self) -> None:
        """Take in the (un)subscriptions that arrived: one byte, 1 or 0, then the prefix."""
        sock = self.socket
        while _waiting(sock):
            try:
                message = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            if not message:
                continue
            if message[0] == 1:
                self._subscribed.add(message[1:])
            elif message[0] == 0:
                self._subscribed.discard(message[1:])
            self._wanted.clear()

    def publish(
        self,
        topic: str,
        body: Message,
        *,
        trace: TraceContext | None = None,
        buffers: Sequence[Buffer] = (),
        deadline_wall_ns: int = 0,
        priority: int = 0,
        tenant: str = "",
    ) -> int:
        """Publish one message; returns its sequence number on that topic (unchanged, and
        nothing sent, when nobody subscribes to it)."""
        if not self.wanted(topic):
            return self._seq.get(topic, 0)
        parts = self.encode(
            topic,
            body,
            trace=trace,
            buffers=buffers,
            deadline_wall_ns=deadline_wall_ns,
            priority=priority,
            tenant=tenant,
        )
        # Frame by frame with a plain int flag: send_multipart ORs enum flags per frame, which
        # cost as much as the encoding itself for small messages.
        send = self.socket.send
        copy = not buffers
        last = len(parts) - 1
        for i, part in enumerate(parts):
            send(part, _SNDMORE if i < last else 0, copy=copy)
        return self._seq[topic]

    def encode(
        self,
        topic: str,
        body: Message,
        *,
        trace: TraceContext | None = None,
        buffers: Sequence[Buffer] = (),
        deadline_wall_ns: int = 0,
        priority: int = 0,
        tenant: str = "",
    ) -> list[Buffer]:
        """The frames of the next message on `topic` (it takes the next sequence number).

        Sending the same frames again is a safe retransmission: receivers drop a repeated
        sequence number as a duplicate.
        """
        frame = self._frames.get(topic)
        if frame is None:
            frame = self._frames[topic] = topic_frame(topic)
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        cls = type(body)
        schema = self._schemas.get(cls)
        if schema is None:
            schema = self._schemas[cls] = schema_id(cls)
        envelope = Envelope.build(
            schema=schema,
            seq=seq,
            source=self._source,
            instance=self._instance,
            stamp_ns=self._clock(),
            trace=trace,
            deadline_wall_ns=deadline_wall_ns,
            priority=priority,
            tenant=tenant,
            session=self._session,
        )
        parts: list[Buffer] = [frame, self._codec.encode(envelope), self._codec.encode(body)]
        parts.extend(buffers)
        return parts

    def publish_raw(self, frames: Sequence[Buffer]) -> None:
        """Forward already-encoded frames unchanged (bag replay keeps recorded envelopes)."""
        self.socket.send_multipart(list(frames), copy=False)

    def close(self) -> None:
        """Close the socket without lingering."""
        self.socket.close()


@dataclass(slots=True)
class Received:
    """One message from the bus: its topic, envelope, decoded body and raw tensor buffers."""

    topic: str
    envelope: Envelope
    body: Any
    buffers: list[zmq.Frame]
    # Each frame as received: bytes (small frames) or zmq.Frame (zero-copy); both are buffers.
    frames: list[Any]
    size: int


@dataclass(slots=True)
class TopicStats:
    """What a subscriber saw on one topic: messages, bytes and sequence gaps (drops)."""

    messages: int = 0
    bytes: int = 0
    lost: int = 0
    duplicates: int = 0
    malformed: int = 0
    replayed: int = 0  # replayed messages (left out, or delivered without gap counting)
    last_seq: dict[tuple[str, int, int], int] = field(default_factory=dict)


class Subscriber(Closing):
    """Receives typed messages on topics; counts gaps in each publisher's sequence numbers.

    A topic is subscribed exactly (name + NUL) unless `prefix=True`, when every topic that
    starts with the name matches (`""` then means every topic).

    A message that `vigil bag play` published (its envelope's `replay` is set) is only counted
    when `skip_replayed` is True or names its topic; otherwise it is delivered, outside the
    sequence accounting of live publishers (a replay may carry the very sessions it was
    recorded from).
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        topics: Iterable[str],
        *,
        prefix: bool = False,
        typed: bool = True,
        hwm: int = 100_000,
        bind: bool = False,
        curve: CurveConfig | None = None,
        strict: bool = False,
        skip_replayed: bool | Collection[str] = False,
    ) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        secure(self.socket, endpoint, curve, "server" if bind else "client")
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode() if prefix else topic_frame(topic))
        if bind:
            self.socket.bind(endpoint)
        else:
            self.socket.connect(endpoint)
        self._typed = typed
        # With `strict`, a subscriber that knows a publisher session counts the first message
        # of that session on a new topic from seq 1 (for receivers that must miss nothing).
        self._strict = strict
        self._skip_all = skip_replayed is True
        self._skip = frozenset(() if isinstance(skip_replayed, bool) else skip_replayed)
        self._known: dict[bytes, tuple[str, TopicStats]] = {}
        self._sessions: set[tuple[str, int, int]] = set()
        self._codec = Codec()
        self.stats: dict[str, TopicStats] = {}

    def recv(self, timeout_ms: int | None = None) -> Received | None:
        """The next well-formed message, or None on timeout or a malformed/duplicate one.

        Malformed messages and duplicates (a latched value re-sent to a late joiner that had
        it already) are counted in `stats`, never raised.
        """
        sock = self.socket
        if timeout_ms == 0 and not _waiting(sock):
            return None  # the common case of a drain: nothing more
        try:
            first = sock.recv(_NOBLOCK)
        except zmq.Again:
            if timeout_ms is not None and not sock.poll(timeout_ms):
                return None
            first = sock.recv()
        # Topic, envelope and body are small: copying them is cheaper than wrapping each in a
        # zmq.Frame. Tensor buffers after them are received without a copy. (`get` with an int
        # option skips the enum handling of the `rcvmore` property: it dominated small messages.)
        frames: list[Any] = [first]
        recv, more = sock.recv, sock.get
        while more(_RCVMORE):
            frames.append(recv(0, len(frames) < 3))
        return self.decode(frames)

    # implements: SR-ING-003, SR-ERR-003
    def decode(self, frames: list[Any]) -> Received | None:
        """Decode frames already read from `socket` (for callers that poll many sockets)."""
        size = sum(map(len, frames))
        # Topic frames repeat: resolve each once to its name and stats (bounded, so a flood of
        # invented topics cannot grow it).
        head = bytes(frames[0])
        known = self._known.get(head)
        if known is None:
            try:
                name = parse_topic_frame(head)
            except (ValueError, UnicodeDecodeError):
                self._stats("?").malformed += 1
                return None
            known = (name, self._stats(name))
            if len(self._known) < 1024:
                self._known[head] = known
        topic, stats = known
        if len(frames) < 3:
            stats.malformed += 1
            return None
        try:
            envelope = self._codec.decode_envelope(_view(frames[1]))
            if self._typed:
                body = self._codec.decode_body(envelope.schema, _view(frames[2]))
            else:
                body = self._codec.decode_any(_view(frames[2]))
        except (
            msgspec.DecodeError,
            msgspec.ValidationError,
            KeyError,
            RecursionError,
            UnicodeDecodeError,
        ):
            stats.malformed += 1
            return None
        if envelope.replay:
            stats.replayed += 1
            if self._skip_all or topic in self._skip:
                return None
            stats.messages += 1
            stats.bytes += size
            return Received(topic, envelope, body, frames[3:], frames, size)
        key = (envelope.source, envelope.instance, envelope.session)
        last = stats.last_seq.get(key)
        if last is not None and envelope.seq <= last:
            stats.duplicates += 1
            return None
        if last is not None and envelope.seq > last + 1:
            stats.lost += envelope.seq - last - 1
        elif last is None and key in self._sessions and envelope.seq > 1:
            # A publisher this subscriber has followed all along, on a topic it had not used
            # yet: everything before this first message was missed.
            stats.lost += envelope.seq - 1
        if last is None and self._strict:
            self._sessions.add(key)
        stats.last_seq[key] = envelope.seq
        stats.messages += 1
        stats.bytes += size
        return Received(topic, envelope, body, frames[3:], frames, size)

    def _stats(self, topic: str) -> TopicStats:
        stats = self.stats.get(topic)
        if stats is None:
            stats = self.stats[topic] = TopicStats()
        return stats

    def positions(self) -> dict[str, list[tuple[str, int, int, int]]]:
        """The last sequence number seen per topic and publisher, to resume from later."""
        return {
            topic: [(src, inst, session, seq) for (src, inst, session), seq in s.last_seq.items()]
            for topic, s in self.stats.items()
            if s.last_seq
        }

    def resume(self, positions: dict[str, list[tuple[str, int, int, int]]]) -> None:
        """Continue counting gaps from saved positions (a restarted receiver then sees what
        it missed while it was down as lost, instead of starting afresh)."""
        for topic, entries in positions.items():
            last = self._stats(topic).last_seq
            for src, inst, session, seq in entries:
                last[(src, inst, session)] = seq
                if self._strict:
                    self._sessions.add((src, inst, session))

    @property
    def lost(self) -> int:
        """Messages lost on every topic so far (sequence gaps)."""
        return sum(s.lost for s in self.stats.values())

    def close(self) -> None:
        """Close the socket without lingering."""
        self.socket.close()


def _view(frame: bytes | zmq.Frame) -> bytes | memoryview:
    """A frame's bytes without a copy, whether it was received copied or as a zmq.Frame."""
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def _waiting(sock: zmq.Socket[Any]) -> bool:
    """Whether a message can be received now. Drains that usually find nothing (the
    subscriptions a publisher hears, heartbeats read on a timer) ask this first: a failed
    non-blocking receive raises, and costs a few times as much."""
    return bool(int(sock.get(_EVENTS)) & _POLLIN)
