"""Replaying bags onto the bus on the recorded schedule, and reporting how closely it was kept.

Play publishes through an XPUB socket connected to the proxy's XSUB side (or bound to its own
endpoint with `bind=True`). An XPUB is a PUB that also reads subscriptions: the proxy forwards
every subscription upstream and re-sends the ones it holds when a publisher connects, so
play can wait until each topic it will publish has a subscriber before the first message.

Each message leaves at `t0 + (log_time - origin) / rate` on `time.monotonic_ns()`: the
player sleeps in the poller until about `spin_us` before the deadline and spins the rest, and
it records how late each message left so the report gives the schedule's fidelity.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, suppress
from itertools import count
from typing import Annotated, Final

import msgspec
import numpy as np
import zmq

from vigil.bus.closing import Closing
from vigil.bus.codec import topic_frame
from vigil.bus.curve import CurveConfig, secure
from vigil.bus.envelope import Envelope
from vigil.tools._taps import SubscriptionWatch
from vigil.tools.bag._mcap import BagError, BagMessage, read_messages
from vigil.tools.bag.info import bag_info
from vigil.tools.bag.record import TopicFilter

__all__ = ["NoSubscribers", "PlayConfig", "PlayReport", "Player", "parse_remap"]

_NS: Final = 1_000_000_000
_ENVELOPE_DECODER = msgspec.msgpack.Decoder(Envelope)
_ENVELOPE_ENCODER = msgspec.msgpack.Encoder()
# Added to a recorded session per loop, so receivers see each pass as a new publisher and not
# as duplicates of the pass before (an odd constant walks all of 2**31 before repeating).
_SESSION_STEP: Final = 0x5BD1E995


class NoSubscribers(BagError):
    """Play waited for subscribers and some topics had none when the wait ran out."""

    def __init__(self, topics: Sequence[str], timeout_s: float) -> None:
        super().__init__(f"no subscriber after {timeout_s:g} s for: {', '.join(topics)}")
        self.topics = list(topics)
        self.timeout_s = timeout_s


class PlayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How `vigil bag play` replays a bag."""

    rate: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    loop: bool = False
    start_offset_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # 0 plays to the end.
    duration_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    topics: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # Topics left out by name (`exclude` takes regexes); both win over every selection.
    exclude_topics: tuple[str, ...] = ()
    remap: dict[str, str] = {}
    wait_for_subscribers: bool = False
    wait_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    bind: bool = False
    spin_us: Annotated[int, msgspec.Meta(ge=0)] = 1000
    hwm: Annotated[int, msgspec.Meta(gt=0)] = 100_000


class PlayReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay published and how late against the recorded schedule (microseconds)."""

    messages: int
    loops: int
    elapsed_s: float
    late_p50_us: float
    late_p99_us: float
    late_max_us: float
    late_mean_us: float
    replay: int = 0  # the id every published envelope carried

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"replay {self.replay:x}: "
            f"{self.messages} messages in {self.elapsed_s:.3f} s ({self.loops} pass"
            f"{'es' if self.loops != 1 else ''}); lateness p50 {self.late_p50_us:.1f} us, "
            f"p99 {self.late_p99_us:.1f} us, max {self.late_max_us:.1f} us"
        )


def parse_remap(items: Iterable[str]) -> dict[str, str]:
    """`old:=new` pairs (the ros2 spelling) as a mapping; ValueError on a malformed one."""
    remap: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old or not new:
            raise ValueError(f"remap {item!r} is not OLD:=NEW")
        topic_frame(new)
        remap[old] = new
    return remap


class Player(Closing):
    """Publishes the messages of one bag (or a split recording) on their recorded schedule.

    Every envelope goes out marked with this replay's id (`replay`, random, never 0), so live
    nodes leave the replay out of their state and the logger seals it as a replay. `curve`
    holds the Curve keys for a tcp proxy the player connects to.
    """

    def __init__(
        self,
        config: PlayConfig,
        paths: Sequence[str],
        endpoint: str,
        *,
        monotonic: Callable[[], int] = time.monotonic_ns,
        curve: CurveConfig | None = None,
    ) -> None:
        if not paths:
            raise ValueError("nothing to play")
        self.config = config
        self.paths = list(paths)
        self.endpoint = endpoint
        self.curve = curve
        self._monotonic = monotonic
        self._select = TopicFilter(
            config.topics,
            all_topics=not (config.topics or config.include),
            include=config.include,
            exclude=(*config.exclude, *(f"^{re.escape(t)}$" for t in config.exclude_topics)),
        )
        self.replay = secrets.randbits(62) | 1
        infos = [bag_info(p) for p in self.paths]
        starts = [i.start_ns for i in infos if i.messages]
        ends = [i.end_ns for i in infos if i.messages]
        self.first_ns = min(starts, default=0)
        self.last_ns = max(ends, default=0)
        self.origin_ns = self.first_ns + int(config.start_offset_s * _NS)
        self.stop_ns = (
            self.origin_ns + int(config.duration_s * _NS) if config.duration_s else self.last_ns
        )
        recorded = sorted({t.topic for i in infos for t in i.topics if self._select(t.topic)})
        self.topics = sorted({config.remap.get(t, t) for t in recorded})
        self._frames = {t: topic_frame(config.remap.get(t, t)) for t in recorded}
        self._stack = ExitStack()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stack.callback(self._wake_w.close)
        self._stack.callback(self._wake_r.close)
        self._wake_w.setblocking(False)
        self._watch = SubscriptionWatch()
        self._stopping = False

    @property
    def span_ns(self) -> int:
        """Recorded nanoseconds one pass covers (for a progress bar)."""
        return max(0, min(self.stop_ns, self.last_ns) - self.origin_ns)

    def request_stop(self) -> None:
        """Ask the player to stop after the message in flight (thread- and signal-safe)."""
        self._stopping = True
        # A full pair holds unread requests already: the loop is due to wake.
        with suppress(BlockingIOError):
            self._wake_w.send(b"q")

    def run(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> PlayReport:
        """Play (every pass when looping) and return the timing report.

        `progress(done_ns, span_ns)` is called with the recorded time reached, at most once
        per message.
        """
        config = self.config
        lateness: list[int] = []
        started = self._monotonic()
        passes = 0
        with ExitStack() as stack:
            xpub: zmq.Socket[bytes] = stack.enter_context(ctx.socket(zmq.XPUB))
            xpub.setsockopt(zmq.LINGER, 0)
            xpub.setsockopt(zmq.SNDHWM, config.hwm)
            xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            if config.bind:
                xpub.bind(self.endpoint)
            else:
                # Only a connecting player is a Curve client; a bound one serves no keys.
                secure(xpub, self.endpoint, self.curve, "client")
                xpub.connect(self.endpoint)
            poller = zmq.Poller()
            poller.register(xpub, zmq.POLLIN)
            # Plain sockets are registered (and reported) by file descriptor.
            poller.register(self._wake_r.fileno(), zmq.POLLIN)
            if config.wait_for_subscribers:
                self._wait_for_subscribers(poller, xpub)
            for passes in count(1):
                self._play_once(poller, xpub, passes - 1, lateness, progress)
                if self._stopping or not config.loop:
                    break
        elapsed = (self._monotonic() - started) / _NS
        return msgspec.structs.replace(_report(lateness, passes, elapsed), replay=self.replay)

    def _play_once(
        self,
        poller: zmq.Poller,
        xpub: zmq.Socket[bytes],
        index: int,
        lateness: list[int],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        rate = self.config.rate
        origin, stop = self.origin_ns, self.stop_ns
        span = self.span_ns
        select = self._select
        t0 = 0
        for message in read_messages(self.paths):
            if not select(message.topic) or message.log_time_ns < origin:
                continue
            if message.log_time_ns > stop or self._stopping:
                break
            if not t0:
                # The clock starts at the first message, not before the file is opened.
                t0 = self._monotonic() - int((message.log_time_ns - origin) / rate)
            deadline = t0 + int((message.log_time_ns - origin) / rate)
            if not self._wait_until(deadline, poller, xpub):
                return
            xpub.send_multipart(self._frames_of(message, index))
            lateness.append(self._monotonic() - deadline)
            if progress is not None:
                progress(message.log_time_ns - origin, span)

    def _frames_of(self, message: BagMessage, index: int) -> list[bytes]:
        recorded = _ENVELOPE_DECODER.decode(message.envelope_bytes)
        session = (recorded.session + index * _SESSION_STEP) & 0x7FFFFFFF
        marked = msgspec.structs.replace(recorded, session=session, replay=self.replay)
        envelope = _ENVELOPE_ENCODER.encode(marked)
        return [self._frames[message.topic], envelope, message.body_bytes, *message.buffers]

    def _wait_until(self, deadline: int, poller: zmq.Poller, xpub: zmq.Socket[bytes]) -> bool:
        """Return at `deadline` (True) or on a stop request (False).

        The poller sleeps until `spin_us` before the deadline (it wakes early for
        subscriptions or a stop request), then the last stretch is spun on the monotonic clock.
        """
        spin = self.config.spin_us * 1000
        clock = self._monotonic
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                return not self._stopping
            if remaining > spin:
                events = dict(poller.poll((remaining - spin) // 1_000_000))
                if events:
                    self._handle(events, xpub)
                    if self._stopping:
                        return False

    def _handle(self, events: dict[object, int], xpub: zmq.Socket[bytes]) -> None:
        if xpub in events:
            self._watch.read(xpub)
        if self._wake_r.fileno() in events and b"q" in self._wake_r.recv(64):
            self._stopping = True

    def _uncovered(self) -> list[str]:
        return [t for t in self.topics if not self._watch.count(t)]

    def _wait_for_subscribers(self, poller: zmq.Poller, xpub: zmq.Socket[bytes]) -> None:
        deadline = self._monotonic() + int(self.config.wait_timeout_s * _NS)
        while self._uncovered():
            remaining = deadline - self._monotonic()
            if remaining <= 0 or self._stopping:
                raise NoSubscribers(self._uncovered(), self.config.wait_timeout_s)
            self._handle(dict(poller.poll(max(1, remaining // 1_000_000))), xpub)

    def close(self) -> None:
        """Close the wake-up socket pair."""
        self._stack.close()


def _report(lateness: list[int], passes: int, elapsed_s: float) -> PlayReport:
    if not lateness:
        return PlayReport(
            messages=0,
            loops=passes,
            elapsed_s=elapsed_s,
            late_p50_us=0.0,
            late_p99_us=0.0,
            late_max_us=0.0,
            late_mean_us=0.0,
        )
    late = np.asarray(lateness, dtype=np.float64) / 1000.0
    p50, p99 = np.percentile(late, [50, 99])
    return PlayReport(
        messages=len(lateness),
        loops=passes,
        elapsed_s=elapsed_s,
        late_p50_us=float(p50),
        late_p99_us=float(p99),
        late_max_us=float(late.max()),
        late_mean_us=float(late.mean()),
    )
