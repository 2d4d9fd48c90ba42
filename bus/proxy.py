"""The pub/sub proxy (XSUB/XPUB) with a last-value cache for latched topics."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import msgspec
import zmq

from vigil.bus.closing import Closing
from vigil.bus.codec import topic_frame
from vigil.bus.curve import CurveConfig, Gate, secure
from vigil.bus.envelope import Envelope

__all__ = ["Proxy"]

# Frames forwarded per readiness event before returning to the poller, so one busy side
# cannot starve the other and the heartbeat.
_BURST = 256
_ENVELOPE = msgspec.msgpack.Decoder(Envelope)


# implements: SR-WDG-003
class Proxy(Closing):
    """Forwards every publication from XSUB to XPUB and subscriptions the other way.

    For latched topics it keeps the last message and re-sends it whenever a subscription that
    matches it arrives (XPUB_VERBOSE passes every subscription, not only the first), so a late
    joiner gets the current value at once. Subscribers that had it already drop the copy as a
    duplicate by its sequence number.

    A replayed value (`vigil bag play`) never replaces a live one: it is kept only where no
    live value is, and never written to disk.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        frontend: str,
        backend: str,
        latched: Iterable[str] = (),
        *,
        keep: Path | None = None,
        curve: CurveConfig | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.frontend: zmq.Socket[bytes] = ctx.socket(zmq.XSUB)
        self.backend: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        for sock in (self.frontend, self.backend):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
        self.backend.setsockopt(zmq.XPUB_VERBOSE, 1)
        secure(self.frontend, frontend, curve, "server", gate)
        secure(self.backend, backend, curve, "server", gate)
        self.frontend.bind(frontend)
        self.backend.bind(backend)
        self._latched = {topic_frame(t) for t in latched}
        # A PUB sends only what someone subscribed to: subscribe to latched topics here, so a
        # value published before any subscriber joined is still kept for the first one.
        for topic in self._latched:
            self.frontend.send(b"\x01" + topic)
        self._last: dict[bytes, list[bytes]] = {}
        # Latched topics whose kept value is a replayed one.
        self._replayed: set[bytes] = set()
        self.forwarded = 0
        # Latched values survive a proxy restart: they are kept on disk as they change (rarely)
        # and loaded back, so a late joiner still learns the state after the proxy died. A
        # value the disk refused (full) is kept in memory and saved again by `retry_saves`.
        self._keep = keep
        self.unsaved: dict[bytes, list[bytes]] = {}
        self.save_error = ""
        if keep is not None:
            try:
                keep.mkdir(mode=0o700, exist_ok=True)
                for path in sorted(keep.glob("*.frames")):
                    frames = _read_frames(path.read_bytes())
                    if frames and frames[0] in self._latched:
                        self._last[frames[0]] = frames
            except OSError as exc:
                self.save_error = exc.strerror or str(exc)

    def register(self, poller: zmq.Poller) -> None:
        """Add both sockets to a poller."""
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)

    def handle(self, events: dict[zmq.Socket[bytes], int]) -> None:
        """Forward whatever the poller found ready, in bounded bursts."""
        if events.get(self.frontend):
            self._forward_publications()
        if events.get(self.backend):
            self._forward_subscriptions()

    def _forward_publications(self) -> None:
        for _ in range(_BURST):
            try:
                frames = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            first = frames[0].bytes
            if first in self._latched:
                self._latch(first, [f.bytes for f in frames])
            self.backend.send_multipart(frames, copy=False)
            self.forwarded += 1

    def _latch(self, topic: bytes, frames: list[bytes]) -> None:
        """Keep `frames` as the last value of `topic`, unless a replay would hide a live one."""
        if _replayed(frames):
            if topic in self._last and topic not in self._replayed:
                return
            self._replayed.add(topic)
            self._last[topic] = frames
            return
        self._replayed.discard(topic)
        self._last[topic] = frames
        self._save(topic, frames)

    def _forward_subscriptions(self) -> None:
        for _ in range(_BURST):
            try:
                event = self.backend.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.frontend.send(event)
            if event[:1] == b"\x01":
                prefix = event[1:]
                for topic, frames in self._last.items():
                    if topic.startswith(prefix):
                        self.backend.send_multipart(frames)

    # implements: SR-DSK-001
    def _save(self, topic: bytes, frames: list[bytes]) -> None:
        if self._keep is None:
            return
        try:
            self._keep.mkdir(mode=0o700, exist_ok=True)
            _write_frames(self._keep / f"{topic[:-1].hex()}.frames", frames)
        except OSError as exc:  # a full disk: the value is served from memory meanwhile
            self.unsaved[topic] = frames
            self.save_error = exc.strerror or str(exc)
            return
        self.unsaved.pop(topic, None)
        if not self.unsaved:
            self.save_error = ""

    def retry_saves(self) -> None:
        """Try again to save the latched values the disk refused before."""
        for topic, frames in list(self.unsaved.items()):
            self._save(topic, frames)

    def close(self) -> None:
        """Close both sockets without lingering."""
        self.frontend.close(linger=0)
        self.backend.close(linger=0)


def _replayed(frames: list[bytes]) -> bool:
    """Whether a message's envelope marks it replayed (an unreadable one counts as live)."""
    if len(frames) < 2:
        return False
    try:
        return _ENVELOPE.decode(frames[1]).replay != 0
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return False


def _write_frames(path: Path, frames: list[bytes]) -> None:
    """Store frames length-prefixed, replacing the file atomically (a failed write leaves
    the previous file as it was)."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(b"".join(len(f).to_bytes(4, "little") + f for f in frames))
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _read_frames(data: bytes) -> list[bytes]:
    """Frames written by `_write_frames`; [] for a damaged file (the value is then lost)."""
    frames, at = [], 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at : at + 4], "little")
        at += 4
        if at + size > len(data):
            return []
        frames.append(data[at : at + size])
        at += size
    return frames if at == len(data) else []
