"""Hostile clients of the ingest, each run as its own process (so each is its own peer).

`python -m vigil.testing.hostile ATTACK ENDPOINT [OPTIONS]` runs one attack and prints a JSON
summary of what came back as its last line. Attacks that hold resources (connections, unread
replies, half-sent messages) print `holding` and wait for a line on stdin before they let go.
For the hostile-client suite and `vigil bench ingest`; never imported by runtime code.
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import zmq

from vigil.bus.channel import Channel, FrameFault
from vigil.bus.envelope import TraceContext
from vigil.bus.pubsub import Subscriber
from vigil.client import Client
from vigil.errors import RequestError
from vigil.launch import Launcher
from vigil.schemas import (
    ErrorReply,
    Heartbeat,
    InferRequest,
    InferResult,
    RepliesDropped,
    StateChange,
    TensorRef,
    Topic,
)

__all__ = ["ATTACKS", "AttackProcess", "Outcome", "PacedClient", "Watch", "main"]

_MAX_TS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request of the well-behaved client ended, and when."""

    sent_ns: int
    done_ns: int
    ok: bool
    code: str  # "OK", or the error code, its diagnostic code and the start of its rule

    @property
    def latency_ms(self) -> float:
        """From send to reply."""
        return (self.done_ns - self.sent_ns) / 1e6


class PacedClient:
    """The well-behaved client beside an attack: one frame per period, a few in flight.

    `step()` sends what is due and collects what came back; it waits on the client's socket
    until the next send is due, so the pace is kept without sleeping.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        ctx: zmq.Context[zmq.Socket[bytes]],
        rate_hz: float,
        frame: np.ndarray[Any, Any],
        deadline_s: float = 3.0,
        in_flight: int = 4,
        stream_id: str = "good",
        tenant: str = "good",
    ) -> None:
        self.client = Client(endpoint, name="good", tenant=tenant, ctx=ctx)
        self.frame = frame
        self.deadline_s = deadline_s
        self.in_flight = in_flight
        self.stream_id = stream_id
        self.period_ns = int(1e9 / rate_hz)
        self.outcomes: list[Outcome] = []
        self._sent: dict[int, int] = {}
        self._next_ns = time.monotonic_ns()
        self._ts = 0

    def step(self, timeout_ms: float = 20) -> None:
        """Send if due, then collect replies for at most `timeout_ms`."""
        now = time.monotonic_ns()
        if now >= self._next_ns and self.client.in_flight < self.in_flight:
            self._ts += 1
            seq = self.client.submit(
                self.frame,
                stream_id=self.stream_id,
                frame_ts_us=self._ts,
                deadline_s=self.deadline_s,
            )
            self._sent[seq] = now
            self._next_ns = max(self._next_ns + self.period_ns, now - self.period_ns)
        wait = max(0.0, min(timeout_ms, (self._next_ns - time.monotonic_ns()) / 1e6))
        reply = self.client.poll(wait)
        while reply is not None:
            seq, outcome = reply
            sent = self._sent.pop(seq, time.monotonic_ns())
            if isinstance(outcome, RequestError):
                code = f"{outcome.reply.code} {outcome.reply.diag_code} {outcome.reply.rule[:60]}"
                self.outcomes.append(Outcome(sent, time.monotonic_ns(), False, code))
            else:
                self.outcomes.append(Outcome(sent, time.monotonic_ns(), True, "OK"))
            reply = self.client.poll(0)

    def since(self, start_ns: int) -> list[Outcome]:
        """Requests sent at or after `start_ns` that have ended."""
        return [o for o in self.outcomes if o.sent_ns >= start_ns]

    def close(self) -> None:
        """Close the client."""
        self.client.close()


class Watch:
    """A launched pipeline seen from beside an attack: the well-behaved client kept at its
    pace, the safety states and the nodes' heartbeats as they arrive."""

    def __init__(self, launcher: Launcher, good: PacedClient) -> None:
        self.launcher = launcher
        self.good = good
        self.bus = Subscriber(launcher.ctx, launcher.run.sub, [Topic.SAFETY_STATE, Topic.HEARTBEAT])
        self.seen: list[StateChange] = []
        self.beats: dict[str, dict[str, str]] = {}

    @property
    def endpoint(self) -> str:
        """The ingest's client endpoint."""
        return self.launcher.run.ipc("ingest")

    @property
    def ingest_pid(self) -> int:
        """The ingest's process id now (0 once it exited)."""
        (child,) = [c for c in self.launcher.children if c.plan.spec.kind == "ingest"]
        return child.pid if child.popen is not None and child.popen.poll() is None else 0

    def counter(self, node: str, key: str) -> int:
        """A counter a node put in its last heartbeat (0 before it did)."""
        return int(self.beats.get(node, {}).get(key, "0"))

    def step(self, timeout_ms: float = 10) -> None:
        """Drive the good client, follow the state and the beats, let the launcher supervise."""
        self.good.step(timeout_ms)
        while (got := self.bus.recv(0)) is not None:
            if isinstance(got.body, StateChange):
                self.seen.append(got.body)
            elif isinstance(got.body, Heartbeat):
                self.beats[got.body.node] = got.body.detail
        self.launcher.supervise(0.001)

    def drive(self, done: Callable[[], bool], limit_s: float) -> bool:
        """Drive until `done()` or `limit_s` passed; whether it is done."""
        end = time.monotonic() + limit_s
        while not done():
            if time.monotonic() >= end:
                return False
            self.step()
        return True

    def close(self) -> None:
        """Close the good client and the subscriber."""
        self.good.close()
        self.bus.close()


class AttackProcess:
    """One attack running in its own process; what it prints arrives on a reader thread."""

    def __init__(self, endpoint: str, name: str, *args: str, armed: bool = False) -> None:
        """Start the attack; `armed`: the process starts, says so, and waits for `fire`."""
        self.name = name
        self.armed = False
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vigil.testing.hostile",
                name,
                endpoint,
                *args,
                *(["--armed"] if armed else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.summary: dict[str, Any] = {}
        self.holding = False
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)

    @property
    def done(self) -> bool:
        """Whether the attacker exited."""
        return self.popen.poll() is not None

    def poll(self) -> bool:
        """Take in what the attacker printed; True once it holds, or exited with a summary."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line.strip() == "holding":
                self.holding = True
            elif line.strip() == "armed":
                self.armed = True
            elif line.startswith("{"):
                self.summary = json.loads(line)
        return self.holding or bool(self.summary)

    def fire(self) -> None:
        """Start an armed attacker's attack (it reads one line)."""
        self._line()

    def release(self) -> None:
        """Let a holding attacker go (it reads one line), once."""
        if self.holding and self._line():
            self.holding = False

    def _line(self) -> bool:
        """Send the attacker an empty line; False if its stdin is gone."""
        if self.popen.stdin is None or self.popen.stdin.closed:
            return False
        self.popen.stdin.write("\n")
        self.popen.stdin.flush()
        return True

    def close(self) -> None:
        """Kill it if it still runs; close its pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


class _Dealer:
    """A DEALER speaking the bus framing, counting what comes back."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str) -> None:
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        self.socket.connect(endpoint)
        self.channel = Channel(self.socket, source=name)
        self.replies: Counter[str] = Counter()
        self.notices: list[dict[str, Any]] = []
        self.answered = 0

    def request(
        self,
        frame: np.ndarray[Any, Any],
        *,
        stream_id: str,
        frame_ts_us: int,
        budget_ns: int = 2_000_000_000,
        priority: int = 0,
        tenant: str = "",
        pixels: bytes | None = None,
    ) -> list[bytes | memoryview]:
        """The frames of one valid request (`pixels`: the frame's bytes, made once for many
        requests)."""
        image = np.ascontiguousarray(frame)
        request = InferRequest(
            stream_id=stream_id,
            frame_ts_us=frame_ts_us,
            image=TensorRef(dtype="uint8", shape=image.shape),
        )
        stamp = time.time_ns()
        envelope = self.channel.envelope(
            request,
            trace=TraceContext.new(),
            deadline_wall_ns=stamp + budget_ns,
            priority=priority,
            tenant=tenant,
        )
        envelope = msgspec.structs.replace(envelope, stamp_ns=stamp)
        return [
            self.channel.encode(envelope),
            self.channel.encode(request),
            image.tobytes() if pixels is None else pixels,
        ]

    def send(self, frames: list[bytes | memoryview]) -> None:
        """Send (large frames without a copy), reading replies whenever the socket pushes
        back."""
        while True:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                self.read(10)

    def read(self, timeout_ms: int) -> int:
        """Read every reply that arrives within `timeout_ms`; returns how many."""
        got = 0
        while self.socket.poll(timeout_ms):
            timeout_ms = 0
            try:
                body = self.channel.recv().body
            except FrameFault:
                self.replies["undecodable"] += 1
                continue
            got += 1
            if isinstance(body, InferResult):
                self.replies["OK"] += 1
                self.answered += 1
            elif isinstance(body, ErrorReply):
                self.replies[f"{body.code} {body.diag_code}"] += 1
                self.answered += 1
            elif isinstance(body, RepliesDropped):
                # Replies it had no room for while it did not read: accounted for, not lost.
                self.notices.append({"count": body.count, "seqs": len(body.seqs)})
                self.replies["dropped"] += body.count
                self.answered += body.count
        return got

    def drain(self, expected: int, timeout_s: float = 60) -> None:
        """Read until `expected` replies came or nothing came for `timeout_s`."""
        while self.answered < expected and self.read(int(timeout_s * 1000)):
            pass


def _frame(size: int, value: int = 77, width: int = 0) -> np.ndarray[Any, Any]:
    return np.full((size, width or size, 3), value, dtype=np.uint8)


def _hold() -> None:
    print("holding", flush=True)
    sys.stdin.readline()


def _arm(args: argparse.Namespace) -> None:
    """Everything the attack sends is built: with `--armed`, say so and wait for the word.
    What the phase then measures is the attack's traffic, not the attacker building it."""
    if args.armed:
        print("armed", flush=True)
        sys.stdin.readline()


def zero_budget(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Requests whose deadline equals their stamp (no budget at all), at `--priority`."""
    dealer = _Dealer(ctx, args.endpoint, "zero-budget")
    frame = _frame(args.size)
    requests = [
        dealer.request(
            frame, stream_id="zero", frame_ts_us=n + 1, budget_ns=0, priority=args.priority
        )
        for n in range(args.count)
    ]
    _arm(args)
    for frames in requests:
        dealer.send(frames)
    dealer.drain(args.count)
    return {"replies": dict(dealer.replies)}


def poison(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """One valid frame on another client's stream id, from the end of time."""
    dealer = _Dealer(ctx, args.endpoint, "poison")
    frame = _frame(args.size)
    requests = [
        dealer.request(frame, stream_id=args.stream, frame_ts_us=_MAX_TS) for _ in range(args.count)
    ]
    _arm(args)
    for frames in requests:
        dealer.send(frames)
    dealer.drain(args.count)
    return {"replies": dict(dealer.replies)}


def flood(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """As many valid requests as the socket takes: one tenant, a new tenant each, a spoofed
    tenant, or a chosen priority."""
    dealer = _Dealer(ctx, args.endpoint, "flood")
    frame = _frame(args.size, width=args.width)
    pixels = frame.tobytes()
    requests = [
        dealer.request(
            frame,
            stream_id=f"flood{n % 64}",
            frame_ts_us=n + 1,
            priority=args.priority,
            tenant=f"t{n}" if args.tenant == "*" else args.tenant,
            budget_ns=args.budget_ms * 1_000_000,
            pixels=pixels,
        )
        for n in range(args.count)
    ]
    _arm(args)
    for n, frames in enumerate(requests):
        dealer.send(frames)
        if n % 256 == 0:
            dealer.read(0)
    dealer.drain(args.count)
    return {"replies": dict(dealer.replies)}


def oversize(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Frames over the size limit: somewhat over it, each is refused; far over it, the
    ingest's socket drops the connection and nothing comes back within `--seconds`."""
    dealer = _Dealer(ctx, args.endpoint, "oversize")
    big = bytes(args.bytes)
    requests = [
        [*dealer.request(_frame(8), stream_id="big", frame_ts_us=n + 1)[:2], big]
        for n in range(args.count)
    ]
    _arm(args)
    for frames in requests:
        dealer.send(frames)
    dealer.drain(args.count, timeout_s=args.seconds)
    return {"replies": dict(dealer.replies)}


def unread(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Many requests, no reading until told; then read everything."""
    dealer = _Dealer(ctx, args.endpoint, "unread")
    dealer.socket.setsockopt(zmq.RCVHWM, 1)
    dealer.socket.setsockopt(zmq.RCVBUF, 4096)
    # Refused at once (no budget): the replies come as fast as the ingest can make them.
    frame = _frame(args.size)
    requests = [
        dealer.request(frame, stream_id="unread", frame_ts_us=n + 1, budget_ns=0)
        for n in range(args.count)
    ]
    _arm(args)
    for frames in requests:
        while True:
            try:
                dealer.socket.send_multipart(frames, zmq.NOBLOCK)
                break
            except zmq.Again:
                time.sleep(0.001)  # waits for its own send queue, and never reads
    _hold()
    while dealer.read(2000):
        pass
    return {"replies": dict(dealer.replies), "notices": dealer.notices}


def connections(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Many raw connections that never say a word, held until told."""
    path = args.endpoint.removeprefix("ipc://")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, failed = [], 0
    _arm(args)  # each connection is the attack: nothing to build first
    for _ in range(args.count):
        try:
            conn = socket.socket(socket.AF_UNIX)
        except OSError:  # out of descriptors of its own: hold what it has
            break
        try:
            conn.connect(path)
        except OSError:
            failed += 1
            conn.close()
            continue
        held.append(conn)
    _hold()
    closed = 0
    for conn in held:
        conn.settimeout(0.01)
        try:
            while conn.recv(4096):
                pass
            closed += 1
        except TimeoutError:
            pass
        except OSError:
            closed += 1
        conn.close()
    return {"opened": len(held), "failed": failed, "closed_by_ingest": closed}


def _zmtp(path: str) -> socket.socket:
    """A raw ZMTP 3.0 DEALER connection, handshake done."""
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(path)
    conn.sendall(
        b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + bytes(32)
    )
    greeting = b""
    while len(greeting) < 64:
        got = conn.recv(64 - len(greeting))
        if not got:  # refused: the ingest shut the connection down
            conn.close()
            raise ConnectionRefusedError("connection shut down during the handshake")
        greeting += got
    ready = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
    conn.sendall(bytes([0x04, len(ready)]) + ready)
    if not conn.recv(4096):
        conn.close()
        raise ConnectionRefusedError("connection shut down during the handshake")
    return conn


def half(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Messages that never end: some stop halfway through a frame, one streams frames of an
    endless multipart message until the ingest cuts it."""
    path = args.endpoint.removeprefix("ipc://")
    held, dropped = [], 0
    _arm(args)  # each connection is the attack: nothing to build first
    endless = _zmtp(path)
    for _ in range(args.count):
        # A long frame (8-byte size) announcing `--bytes`, with half of it sent.
        try:
            conn = _zmtp(path)
        except OSError:  # refused: over the connection limit
            dropped += 1
            continue
        try:
            conn.sendall(bytes([0x03]) + struct.pack(">Q", args.bytes) + bytes(args.bytes // 2))
        except OSError:  # over the size limit: the connection is dropped at once
            dropped += 1
            conn.close()
            continue
        held.append(conn)
    chunk = b"\x01\x01x" * 65536
    cut = False
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            endless.sendall(chunk)
    except OSError:
        cut = True
    _hold()
    for conn in held:
        conn.close()
    endless.close()
    return {"half_sent": len(held), "dropped": dropped, "endless_cut": cut}


def bomb(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Bodies of a wrong-typed first field followed by as many empty arrays as fit."""
    dealer = _Dealer(ctx, args.endpoint, "bomb")
    count = args.bytes
    body = b"\x81\xa9stream_id\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    requests = [
        [dealer.request(_frame(8), stream_id="bomb", frame_ts_us=n + 1)[0], body]
        for n in range(args.count)
    ]
    _arm(args)
    for frames in requests:
        dealer.send(frames)
    dealer.drain(args.count)
    return {"replies": dict(dealer.replies)}


def garbage(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Messages that are not MessagePack at all: refused before a trace could be read."""
    dealer = _Dealer(ctx, args.endpoint, "garbage")
    _arm(args)
    for _ in range(args.count):
        dealer.send([b"\xc1", b"\xc1"])
    dealer.drain(args.count)
    return {"replies": dict(dealer.replies)}


ATTACKS = {
    "zero-budget": zero_budget,
    "poison": poison,
    "flood": flood,
    "oversize": oversize,
    "unread": unread,
    "connections": connections,
    "half": half,
    "bomb": bomb,
    "garbage": garbage,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("endpoint")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=16, help="frame height (and width)")
    parser.add_argument("--width", type=int, default=0, help="frame width, if not --size")
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--stream", default="good")
    parser.add_argument("--tenant", default="")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--budget-ms", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--armed", action="store_true", help="say 'armed' once ready, attack on a line read"
    )
    args = parser.parse_args()
    with zmq.Context() as ctx:
        summary = ATTACKS[args.attack](ctx, args)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
