"""The front door: connections limited below the file limit, endless messages cut, the
Curve gate's handshake failures handed on."""

from __future__ import annotations

import contextlib
import queue
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from vigil.bus.curve import REFUSAL_EVENTS, CurveConfig, Gate, Refusal, secure
from vigil.nodes.ingest._door import Door, fd_headroom, resident_bytes
from vigil.nodes.ingest._peers import peer_of

pytestmark = pytest.mark.verifies("SR-RL-003")

# A raw ZMTP 3.0 peer (NULL mechanism, DEALER) that starts a multipart message and never ends
# it: libzmq keeps every frame until the last one comes.
ENDLESS = r"""
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + bytes(32))
greeting = b""
while len(greeting) < 64:
    greeting += s.recv(64 - len(greeting))
ready = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
s.sendall(bytes([0x04, len(ready)]) + ready)
s.recv(4096)  # the server's READY: the handshake is done
chunk = b"\x01\x01x" * 65536
try:
    while True:
        s.sendall(chunk)
except OSError:
    sys.exit(0)
"""


@pytest.fixture
def router(
    short_tmp: Path,
) -> Iterator[tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes], str]]:
    """A ROUTER as the ingest's frontend, not yet bound (the door is entered first)."""
    endpoint = f"ipc://{short_tmp}/front"
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        yield ctx, sock, endpoint


def _until(pred: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _closed(conn: socket.socket) -> bool:
    """Whether the ingest side closed a raw connection: past its greeting, end-of-file."""
    conn.settimeout(0.2)
    try:
        while conn.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


@contextlib.contextmanager
def _connected(endpoint: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` raw connections to a bound ipc endpoint, closed on the way out."""
    with contextlib.ExitStack() as stack:
        raw = [stack.enter_context(socket.socket(socket.AF_UNIX)) for _ in range(count)]
        for conn in raw:
            conn.connect(endpoint.removeprefix("ipc://"))
        yield raw


def test_connections_beyond_the_limit_are_shut_down_at_once(
    router: tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes], str],
) -> None:
    """Connections beyond the limit are closed by the ingest as soon as they are accepted,
    so descriptors never pile up towards the open-file limit; the first ones stay."""
    ctx, sock, endpoint = router
    with Door(ctx, sock, limit=5, per_peer=100, clock=time.monotonic_ns) as door:
        sock.bind(endpoint)
        with _connected(endpoint, 12) as raw:
            _until(lambda: door.refused == 7, "the excess was never refused")
            assert [_closed(conn) for conn in raw[5:]] == [True] * 7
            assert door.connections == 5
            assert not any(_closed(conn) for conn in raw[:5])
            for conn in raw[:2]:
                conn.close()
            _until(lambda: door.connections == 3, "closed connections were never counted")
            reported = 0
            while reported < 7:  # the first at once, the rest summarised a second later
                event = door.events.get(timeout=5)
                assert event.what == "refused"
                reported += event.count
            assert reported == 7


def test_one_process_gets_at_most_its_share_of_connections(
    router: tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes], str],
) -> None:
    """A single process cannot take every connection: past `per_peer` its own are refused."""
    ctx, sock, endpoint = router
    with Door(ctx, sock, limit=50, per_peer=3, clock=time.monotonic_ns) as door:
        sock.bind(endpoint)
        with _connected(endpoint, 5):
            _until(lambda: door.refused == 2, "the process's excess was never refused")
            assert door.connections == 3


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """The connection headroom is measured against the hard open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_headroom() > 0
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_over_its_memory_budget_the_door_cuts_a_peer_that_never_ends_a_message(
    router: tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes], str],
) -> None:
    """A peer streaming one endless multipart message grows libzmq's memory without bound;
    over the budget its connection is cut, while a peer that keeps completing messages keeps
    its connection."""
    ctx, sock, endpoint = router
    door = Door(
        ctx,
        sock,
        limit=10,
        per_peer=10,
        clock=time.monotonic_ns,
        idle_ns=300_000_000,
        rss_threshold=resident_bytes() + (64 << 20),
    )
    with door, ctx.socket(zmq.DEALER) as calm:
        sock.bind(endpoint)
        calm.setsockopt(zmq.LINGER, 0)
        calm.connect(endpoint)
        attacker = subprocess.Popen(
            [sys.executable, "-c", ENDLESS, endpoint.removeprefix("ipc://")]
        )
        try:
            deadline = time.monotonic() + 60
            while attacker.poll() is None:
                assert time.monotonic() < deadline, "the endless message was never cut"
                calm.send(b"ping")
                if sock.poll(50):
                    door.heard_from(peer_of(sock.recv_multipart(copy=False)[-1]).pid)
            assert attacker.returncode == 0  # its connection was shut down under it
            event = door.events.get(timeout=5)
            assert event.what == "cut" and f"pids [{attacker.pid}]" in event.detail
            calm.send(b"still here")
            assert sock.poll(20_000)
        finally:
            attacker.kill()
            attacker.wait()


def test_the_curve_gate_still_hears_handshake_failures_through_the_door(
    short_tmp: Path,
) -> None:
    """A socket has one monitor and the door's replaces the gate's: the door hands the
    handshake failures on, so a peer without Curve is still refused and reported."""
    server_public, server_secret = zmq.auth.create_certificates(str(short_tmp), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(short_tmp), "client")
    curve = CurveConfig(
        server_key=server_public,
        client_secret=client_secret,
        server_secret=server_secret,
        allowed=(client_public,),
    )
    refusals: queue.SimpleQueue[Refusal] = queue.SimpleQueue()
    domain = "tcp://127.0.0.1:0"
    with (
        zmq.Context() as ctx,
        Gate(ctx, curve, report=refusals.put) as gate,
        ctx.socket(zmq.ROUTER) as sock,
        ctx.socket(zmq.DEALER) as plain,
    ):
        sock.setsockopt(zmq.LINGER, 0)
        plain.setsockopt(zmq.LINGER, 0)
        secure(sock, domain, curve, "server", gate)
        door = Door(
            ctx,
            sock,
            limit=10,
            per_peer=10,
            clock=time.monotonic_ns,
            forward_events=REFUSAL_EVENTS,
            forward=lambda frames: gate.on_monitor_event(domain, frames),
        )
        with door:
            sock.bind(domain)
            plain.connect(sock.getsockopt(zmq.LAST_ENDPOINT).decode())
            plain.send(b"hello")
            refusal = refusals.get(timeout=20)
    assert (refusal.endpoint, refusal.key) == (domain, "")
    assert "mechanism" in refusal.reason
