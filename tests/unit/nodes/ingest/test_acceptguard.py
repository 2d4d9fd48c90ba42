"""The accept guard: at the open-file limit a connection is refused, and the process lives."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from vigil.nodes._preload import environ
from vigil.nodes.ingest import KIND

pytestmark = pytest.mark.verifies("SR-RL-003")

FILES = 64
# A ROUTER behind the ingest's door with no limit of its own, in a process of FILES open
# files: every connection is accepted (and held, however silent) until the descriptors run
# out. It answers each message with the guard's count of refusals and the door's.
SERVER = rf"""
import json, resource, sys, time
import zmq
from vigil.nodes.ingest._door import Door, accept_guard

resource.setrlimit(resource.RLIMIT_NOFILE, ({FILES}, {FILES}))
guard = accept_guard()
with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HANDSHAKE_IVL, 0)
    unlimited = 1 << 20
    with Door(ctx, sock, limit=unlimited, per_peer=unlimited, clock=time.monotonic_ns,
              guard=guard) as door:
        sock.bind(sys.argv[1])
        print(sock.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
        while True:
            peer, _ = sock.recv_multipart()
            counts = {{"guard": guard() if guard else None, "door": door.refused}}
            sock.send_multipart([peer, json.dumps(counts).encode()])
"""


@pytest.fixture(params=["ipc", "tcp"])
def server(
    request: pytest.FixtureRequest, short_tmp: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The server, launched as the launcher launches an ingest, and its bound endpoint."""
    endpoint = f"ipc://{short_tmp}/front" if request.param == "ipc" else "tcp://127.0.0.1:*"
    with subprocess.Popen(
        [sys.executable, "-c", SERVER, endpoint],
        stdout=subprocess.PIPE,
        env=environ(KIND.preload, os.environ),
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            yield child, child.stdout.readline().strip()
        finally:
            child.kill()


def _connect(endpoint: str) -> socket.socket:
    if endpoint.startswith("ipc://"):
        conn = socket.socket(socket.AF_UNIX)
        try:
            conn.connect(endpoint.removeprefix("ipc://"))
        except OSError:
            conn.close()
            raise
        return conn
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    try:
        return socket.create_connection((host, int(port)), timeout=30)
    except TimeoutError:
        pytest.fail("connections are left pending: the server no longer accepts")


@contextlib.contextmanager
def _storm(endpoint: str, count: int) -> Iterator[list[socket.socket]]:
    """Up to `count` raw connections (fewer once the server is gone), closed on the way out."""
    with contextlib.ExitStack() as stack:
        held = []
        for _ in range(count):
            try:
                held.append(stack.enter_context(_connect(endpoint)))
            except ConnectionRefusedError:  # nothing listens any more
                break
        yield held


def _greeted(conn: socket.socket) -> bool:
    """Whether the server took the connection (it greets) or refused it (end-of-file)."""
    conn.settimeout(30)
    try:
        return bool(conn.recv(1))
    except TimeoutError:
        pytest.fail("a connection was neither greeted nor refused: left pending")
    except OSError:  # reset: refused
        return False


def _until_closed(conn: socket.socket) -> None:
    """End our side of a connection the server took, and read until the server has closed
    its own: its descriptor is free again once we read end-of-file."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(30)
    try:
        while conn.recv(4096):
            pass  # the rest of its greeting
    except TimeoutError:
        pytest.fail("the server kept a connection its peer had closed")
    except OSError:  # reset: closed as well
        return


def _ask(dealer: zmq.Socket[bytes], child: subprocess.Popen[str]) -> dict[str, int | None]:
    """The server's counts of refusals: the guard's and the door's."""
    dealer.send(b"counts")
    deadline = time.monotonic() + 30
    while not dealer.poll(100):
        assert child.poll() is None, f"the server died (exit {child.returncode})"
        assert time.monotonic() < deadline, "the server never answered"
    counts: dict[str, int | None] = json.loads(dealer.recv())
    return counts


def test_connections_beyond_the_open_file_limit_are_refused_and_the_process_lives(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    """Four times as many connections as the process has open files: those that find no
    descriptor are refused (closed at once), the process neither aborts nor spins on them,
    every refusal is counted and reported by the door, and a client served afterwards."""
    child, endpoint = server
    with _storm(endpoint, 4 * FILES) as held:
        greeted = [_greeted(conn) for conn in held]
        for conn, took in zip(held, greeted, strict=True):
            if took:  # its descriptor must be free before the client below connects
                _until_closed(conn)
    deadline = time.monotonic() + 30
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        counts = _ask(dealer, child)
        refused = greeted.count(False)
        assert len(greeted) == 4 * FILES
        assert refused >= 3 * FILES
        assert counts["guard"] == refused
        while counts["door"] != refused:  # the door reads the guard at its next tick
            assert time.monotonic() < deadline, "the door never counted the guard's refusals"
            counts = _ask(dealer, child)
