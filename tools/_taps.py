"""What the live CLI tools share: the run and its bus (with Curve keys on tcp), rolling topic
meters, heartbeats, tensor summaries and a publisher that sees its subscribers."""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import click
import msgspec
import numpy as np
import zmq

from vigil.bus.closing import Closing
from vigil.bus.codec import Codec, topic_frame
from vigil.bus.curve import CurveConfig, applies, load_public, load_secret, secure
from vigil.bus.envelope import Envelope
from vigil.bus.pubsub import Received, Subscriber
from vigil.bus.rundir import RunDir, RunGraph, find_run_dir
from vigil.schemas import Message, SafetyState, Topic, schema_id
from vigil.tools._options import KEY_ENV

__all__ = [
    "BeatBook",
    "BusPublisher",
    "BusTap",
    "LastBeat",
    "Silence",
    "SubscriptionWatch",
    "TopicMeter",
    "TopicRate",
    "format_bytes",
    "open_bus",
    "open_run",
    "summarise_tensors",
    "tap_curve",
]

_NS: Final = 1_000_000_000


def open_run(explicit: str | None) -> RunDir:
    """The run a CLI tool works on (`--run-dir`, $VIGIL_RUN_DIR or ./run/current)."""
    try:
        return find_run_dir(explicit)
    except FileNotFoundError as exc:
        raise click.ClickException(
            f"{exc}; start one with `vigil launch` or pass --run-dir"
        ) from exc


class Silence:
    """Why a topic a tool waits on is quiet: nothing publishes it, or the pipeline refuses.

    The tool also subscribes to `WATCHED` and hands every message to `see`; `notes` says,
    once each, what explains a silence that has lasted `quiet_s`.
    """

    WATCHED: Final = (Topic.INFER_ERROR, Topic.SAFETY_STATE)

    def __init__(
        self, topic: str, graph: RunGraph | None, now: float, quiet_s: float = 2.0
    ) -> None:
        self.topic = topic
        self.publishers = (
            None if graph is None else sorted(n.name for n in graph.nodes if topic in n.publishes)
        )
        self.quiet_s = quiet_s
        self.last_heard = now
        self.refusals: Counter[str] = Counter()
        self.state = ""
        self.cause = ""
        self._said: set[str] = set()

    def first_notes(self) -> list[str]:
        """What can be said before anything arrives."""
        if self.publishers == []:
            return [f"# no node of this launch publishes {self.topic}; waiting anyway"]
        return []

    def heard(self, now: float) -> None:
        """A message of the topic itself arrived."""
        self.last_heard = now

    def see(self, received: Received) -> None:
        """A message of a watched topic."""
        body = received.body if isinstance(received.body, dict) else {}
        if received.topic == Topic.INFER_ERROR:
            self.refusals[str(body.get("code", "?"))] += 1
        elif received.topic == Topic.SAFETY_STATE:
            self.state = str(body.get("state", ""))
            self.cause = str(body.get("cause", ""))

    def notes(self, now: float) -> list[str]:
        """What explains the silence, each said once, after `quiet_s` without the topic."""
        quiet = now - self.last_heard
        if quiet < self.quiet_s:
            return []
        found: dict[str, str] = {}
        if self.state and self.state != SafetyState.NORMAL:
            found[f"state {self.state}"] = (
                f"# the safety state is {self.state}"
                + (f" ({self.cause})" if self.cause else "")
                + "; requests may be refused"
            )
        if self.refusals:
            counts = ", ".join(f"{code} {n}" for code, n in self.refusals.most_common())
            found["refusals"] = (
                f"# nothing on {self.topic} for {quiet:.0f} s while the pipeline refuses "
                f"requests ({counts} on {Topic.INFER_ERROR})"
            )
        new = [text for key, text in found.items() if key not in self._said]
        self._said.update(found)
        return new


# -- the bus and its keys ------------------------------------------------------------------


class BusTap(msgspec.Struct, frozen=True, kw_only=True):
    """Where a tool connects to the run's proxy, and the Curve keys it connects with there."""

    pub: str
    """The proxy's XSUB: where publishers connect."""
    sub: str
    """The proxy's XPUB: where subscribers connect."""
    curve: CurveConfig | None = None
    """None on ipc, where the run directory's permissions are the access control."""


def tap_curve(endpoint: str, server_key: str, key: str | None) -> CurveConfig | None:
    """The Curve keys a tool connects to `endpoint` with; None where Curve does not apply.

    Raises ClickException naming what to pass when a tcp endpoint lacks a key, or when no
    server key is known or a key file is unusable: an unkeyed peer would only be refused by
    the bus, silently from the tool's side.
    """
    if not applies(endpoint):
        return None
    if not key:
        raise click.ClickException(
            f"the bus at {endpoint} is tcp with CurveZMQ: pass --key FILE (or set ${KEY_ENV}) "
            "with a client key pair NAME.key_secret that the launch file's security.allowed "
            "lists (make one: vigil keys gen --out DIR --name NAME)"
        )
    if not server_key:
        raise click.ClickException(
            f"no public key of the bus server is known for {endpoint}: pass --run-dir of the "
            "launch that serves it (its graph.json names the key as server_key)"
        )
    try:
        load_secret(key)
        load_public(server_key)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot connect to {endpoint} with Curve: {exc}") from exc
    return CurveConfig(server_key=server_key, client_secret=key)


def open_bus(run: RunDir, key: str | None) -> BusTap:
    """The run's proxy endpoints as its graph names them (tcp on a `bus:` launch), with the
    Curve keys for tcp; the run directory's ipc endpoints when it has no graph yet."""
    try:
        graph = run.read_graph()
    except FileNotFoundError:
        return BusTap(pub=run.pub, sub=run.sub)
    pub = graph.endpoints.get("pub", run.pub)
    sub = graph.endpoints.get("sub", run.sub)
    # The launcher puts both sides on one transport; either one on tcp needs the keys.
    curve = tap_curve(sub, graph.server_key, key) or tap_curve(pub, graph.server_key, key)
    return BusTap(pub=pub, sub=sub, curve=curve)


def format_bytes(x: float) -> str:
    """A byte count or rate with a decimal unit (B, KB, MB, GB)."""
    for unit in ("B", "KB", "MB"):
        if abs(x) < 1000:
            return f"{x:.1f} {unit}"
        x /= 1000
    return f"{x:.1f} GB"


# -- rates ---------------------------------------------------------------------------------


class TopicRate(msgspec.Struct, frozen=True, kw_only=True):
    """One topic over the last window: rate, bandwidth, spacing, delay and losses."""

    topic: str
    messages: int
    window_s: float
    rate_hz: float
    bytes_per_s: float
    mean_bytes: float
    min_interval_ms: float
    max_interval_ms: float
    std_interval_ms: float
    delay_p50_ms: float
    delay_p99_ms: float
    delay_max_ms: float
    lost: int
    """Messages lost since the tool started (publishers' sequence gaps)."""
    malformed: int


@dataclass(slots=True)
class _Series:
    arrivals: deque[int] = field(default_factory=deque)
    sizes: deque[int] = field(default_factory=deque)
    delays: deque[int] = field(default_factory=deque)


class TopicMeter:
    """Rolling per-topic figures over the last `window_s` seconds of arrivals.

    Delay is receipt (this host's wall clock) minus the envelope's `stamp_ns` (the publisher's
    wall clock), so across hosts it includes their clock offset.
    """

    def __init__(
        self,
        window_s: float,
        *,
        monotonic: Callable[[], int] = time.monotonic_ns,
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        if window_s <= 0:
            raise ValueError("the window must be positive")
        self.window_ns = int(window_s * _NS)
        self._monotonic = monotonic
        self._wall = wall
        self._series: dict[str, _Series] = {}
        self.started_ns = monotonic()

    def add(self, received: Received) -> None:
        """Count one message."""
        series = self._series.get(received.topic)
        if series is None:
            series = self._series[received.topic] = _Series()
        series.arrivals.append(self._monotonic())
        series.sizes.append(received.size)
        series.delays.append(self._wall() - received.envelope.stamp_ns)

    def _prune(self, series: _Series, now: int) -> None:
        horizon = now - self.window_ns
        while series.arrivals and series.arrivals[0] < horizon:
            series.arrivals.popleft()
            series.sizes.popleft()
            series.delays.popleft()

    def rates(self, sub: Subscriber, topics: Iterable[str] | None = None) -> list[TopicRate]:
        """Figures for `topics` (default: every topic seen, or with a loss), sorted by name."""
        now = self._monotonic()
        names = (
            sorted(set(self._series) | {t for t in sub.stats if t != "?"})
            if topics is None
            else list(topics)
        )
        # Until a whole window has passed, rates are over the time actually observed.
        span_ns = max(1, min(self.window_ns, now - self.started_ns))
        out: list[TopicRate] = []
        for topic in names:
            series = self._series.get(topic) or _Series()
            self._prune(series, now)
            stats = sub.stats.get(topic)
            n = len(series.arrivals)
            gaps = np.diff(np.fromiter(series.arrivals, np.int64, n)) / 1e6 if n > 1 else None
            delays = np.fromiter(series.delays, np.int64, n) / 1e6 if n else None
            p50, p99 = np.percentile(delays, [50, 99]) if delays is not None else (math.nan,) * 2
            total = sum(series.sizes)
            out.append(
                TopicRate(
                    topic=topic,
                    messages=n,
                    window_s=span_ns / _NS,
                    rate_hz=n / (span_ns / _NS),
                    bytes_per_s=total / (span_ns / _NS),
                    mean_bytes=total / n if n else 0.0,
                    min_interval_ms=float(gaps.min()) if gaps is not None else math.nan,
                    max_interval_ms=float(gaps.max()) if gaps is not None else math.nan,
                    std_interval_ms=float(gaps.std()) if gaps is not None else math.nan,
                    delay_p50_ms=float(p50),
                    delay_p99_ms=float(p99),
                    delay_max_ms=float(delays.max()) if delays is not None else math.nan,
                    lost=stats.lost if stats else 0,
                    malformed=stats.malformed if stats else 0,
                )
            )
        return out


# -- heartbeats ----------------------------------------------------------------------------


class LastBeat(msgspec.Struct, frozen=True, kw_only=True):
    """The last heartbeat heard from one node."""

    node: str
    kind: str
    pid: int
    period_ms: int
    detail: dict[str, str]
    stamp_ns: int


class BeatBook:
    """The last heartbeat of every node, from `health/heartbeat` messages decoded or not."""

    def __init__(self, wall: Callable[[], int] = time.time_ns) -> None:
        self.beats: dict[str, LastBeat] = {}
        self._wall = wall

    def add(self, received: Received) -> None:
        """Keep a heartbeat (other messages are ignored)."""
        body = msgspec.to_builtins(received.body)
        if not isinstance(body, dict) or body.get("type") != "health.heartbeat":
            return
        try:
            beat = msgspec.convert(
                {**body, "stamp_ns": received.envelope.stamp_ns}, LastBeat, strict=False
            )
        except msgspec.ValidationError:
            return
        self.beats[beat.node] = beat

    def age_ms(self, node: str) -> float | None:
        """Milliseconds since `node` last beat (by its own clock), None when never heard."""
        beat = self.beats.get(node)
        return None if beat is None else (self._wall() - beat.stamp_ns) / 1e6


# -- tensors -------------------------------------------------------------------------------

_DTYPES: Final = frozenset({"uint8", "float32", "float16"})


def _tensor_ref(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("dtype") in _DTYPES
        and isinstance(value.get("shape"), list)
        and all(isinstance(d, int) and d > 0 for d in value["shape"])
    )


def _summary(ref: dict[str, Any], buffers: list[memoryview], full: bool) -> dict[str, Any]:
    out = dict(ref)
    index, offset = int(ref.get("buffer", 0)), int(ref.get("offset", 0))
    dtype = np.dtype(ref["dtype"])
    count = math.prod(ref["shape"])
    if index >= len(buffers) or offset + count * dtype.itemsize > len(buffers[index]):
        out["error"] = "buffer missing or shorter than dtype x shape"
        return out
    array = np.frombuffer(buffers[index], dtype, count, offset).reshape(ref["shape"])
    if full:
        out["data"] = array.tolist()
        return out
    as_float = array.astype(np.float64)
    out.update(min=float(as_float.min()), max=float(as_float.max()), mean=float(as_float.mean()))
    return out


def summarise_tensors(body: Any, buffers: list[memoryview], *, full: bool = False) -> Any:
    """The body with each tensor reference (`dtype`, `shape`, `buffer`, `offset`) replaced by
    its summary (min/max/mean of the buffer it points at), or its values when `full`."""
    if _tensor_ref(body):
        return _summary(body, buffers, full)
    if isinstance(body, dict):
        return {k: summarise_tensors(v, buffers, full=full) for k, v in body.items()}
    if isinstance(body, list):
        return [summarise_tensors(v, buffers, full=full) for v in body]
    return body


# -- publishing ----------------------------------------------------------------------------


class SubscriptionWatch:
    """Counts the subscriptions an XPUB socket reads, per topic.

    Through the proxy, subscriptions are merged: when the XPUB connects, the proxy's XSUB sends
    the subscriptions it holds once each, and afterwards each new subscriber's subscription
    arrives as it joins. So a topic's count is a lower bound of its subscribers: exact for those
    that join after the XPUB connected, one for all that were there before. `floor` raises it
    where more is known (the subscribers the run's graph lists for the topic).
    """

    def __init__(self, floor: Mapping[str, int] | None = None) -> None:
        self._events: list[bytes] = []
        self._floor = dict(floor or {})

    def read(self, socket: zmq.Socket[bytes]) -> None:
        """Read every pending subscription message from an XPUB socket."""
        while True:
            try:
                event = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self._events.append(event[1:])

    def count(self, topic: str) -> int:
        """Subscribers known for `topic` (a subscription to any prefix of it counts)."""
        frame = topic_frame(topic)
        seen = sum(1 for prefix in self._events if frame.startswith(prefix))
        return max(seen, self._floor.get(topic, 0)) if seen else 0


class BusPublisher(Closing):
    """Publishes typed messages through an XPUB connected to the proxy's XSUB side.

    A plain PUB cannot tell whether anyone listens; an XPUB reads the subscriptions it is sent,
    so a tool can wait for subscribers before its first message and not lose it to the slow
    joiner. Messages are framed, numbered per topic and stamped exactly as `Publisher` does.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        source: str,
        watch: SubscriptionWatch | None = None,
        hwm: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
        curve: CurveConfig | None = None,
    ) -> None:
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        secure(self.socket, endpoint, curve, "client")
        self.socket.connect(endpoint)
        self.watch = watch or SubscriptionWatch()
        self._source = source
        self._clock = clock
        self._codec = Codec()
        self._session = secrets.randbits(31)
        self._seq: dict[str, int] = {}

    def wait_for(self, topic: str, subscribers: int, timeout_s: float) -> int:
        """Wait until `topic` has `subscribers` known subscribers; returns how many it has
        (fewer only when `timeout_s` ran out)."""
        deadline = time.monotonic_ns() + int(timeout_s * _NS)
        while True:
            self.watch.read(self.socket)
            have = self.watch.count(topic)
            left = deadline - time.monotonic_ns()
            if have >= subscribers or left <= 0:
                return have
            self.socket.poll(max(1, left // 1_000_000))

    def publish(self, topic: str, body: Message) -> int:
        """Publish one message; returns its sequence number on the topic."""
        self.watch.read(self.socket)
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        envelope = Envelope(
            schema=schema_id(type(body)),
            seq=seq,
            source=self._source,
            stamp_ns=self._clock(),
            session=self._session,
        )
        self.socket.send_multipart(
            [topic_frame(topic), self._codec.encode(envelope), self._codec.encode(body)]
        )
        return seq

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket, letting queued messages leave for at most `linger_ms`."""
        self.socket.close(linger=linger_ms)
