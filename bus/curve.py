"""CurveZMQ on tcp endpoints: key options for servers and clients, and the ZAP gate.

Only `tcp://` endpoints are secured. `ipc://` endpoints live in the run directory, whose
permissions are their access control, and `inproc://` never leaves the process.

Secret keys are passed around as *paths* (a node's arguments are visible in
/proc/PID/cmdline to every user); they are read where the socket is made.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self

import msgspec
import structlog
import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import AuthenticationThread, ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

__all__ = [
    "REFUSAL_EVENTS",
    "CurveConfig",
    "Gate",
    "Refusal",
    "applies",
    "client",
    "load_public",
    "load_secret",
    "secure",
    "server",
]

Role = Literal["server", "client"]

# The handshake failures ZAP never sees: a peer without Curve (mechanism mismatch) or with
# the wrong server key (its HELLO does not decrypt). Refusals by key come from ZAP itself.
# A socket has one monitor: whoever else monitors a guarded socket hands these to the gate
# (`Gate.on_monitor_event`).
REFUSAL_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_MONITORED = REFUSAL_EVENTS
_PROTOCOL_ERRORS = {
    getattr(zmq, name): name.removeprefix("PROTOCOL_ERROR_").lower()
    for name in dir(zmq)
    if name.startswith("PROTOCOL_ERROR_")
}
# A refused peer reconnects every 100 ms: the first refusal per peer and reason is reported
# at once, later ones are counted and summarised at most this often.
_REPORT_EVERY_NS = 1_000_000_000
_MAX_TRACKED = 1024


class CurveConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where one process finds the Curve keys it needs.

    `server_key` is the server's public certificate (`NAME.key`), `client_secret` this
    peer's own key pair (`NAME.key_secret`). Processes that bind also get the server's key
    pair and the public certificates of every client allowed in.
    """

    server_key: str
    client_secret: str
    server_secret: str = ""
    allowed: tuple[str, ...] = ()


@functools.lru_cache(maxsize=64)
def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of a `.key_secret` file; OSError/ValueError when unusable."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


@functools.lru_cache(maxsize=256)
def load_public(path: str) -> bytes:
    """The z85 public key of a certificate file (`.key` or `.key_secret`)."""
    public, _ = zmq.auth.load_certificate(path)
    return public


def applies(endpoint: str) -> bool:
    """Whether `endpoint` is secured with Curve (tcp only)."""
    return endpoint.startswith("tcp://")


# implements: SR-SEC-001
def server(sock: zmq.Socket[Any], curve: CurveConfig, *, domain: str = "vigil") -> None:
    """Make `sock` a Curve server (before it binds); ZAP then checks each client's key."""
    if not curve.server_secret:
        raise ValueError("a Curve server needs the server's secret key")
    public, secret = load_secret(curve.server_secret)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def client(sock: zmq.Socket[Any], curve: CurveConfig) -> None:
    """Make `sock` a Curve client of the configured server (before it connects)."""
    public, secret = load_secret(curve.client_secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, load_public(curve.server_key))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def secure(
    sock: zmq.Socket[Any],
    endpoint: str,
    curve: CurveConfig | None,
    role: Role,
    gate: Gate | None = None,
) -> None:
    """Apply Curve to a socket about to bind (`server`) or connect (`client`) to `endpoint`.

    Nothing happens for ipc/inproc endpoints or without a config. A server socket is
    watched by `gate`, whose ZAP handler must already run in the socket's context.
    """
    if curve is None or not applies(endpoint):
        return
    if role == "client":
        client(sock, curve)
        return
    if gate is None:
        raise ValueError(f"a Curve server on {endpoint} needs a running Gate (ZAP handler)")
    server(sock, curve, domain=endpoint)
    gate.watch(sock, endpoint)


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """One refused handshake (or a summary of repeats from the same peer)."""

    endpoint: str
    peer: str
    key: str
    reason: str
    count: int

    def describe(self) -> str:
        """One line for the log and the diagnostic message."""
        who = f"{self.peer or 'a peer'}" + (f" key {self.key}" if self.key else " without a key")
        times = f" ({self.count} refusals)" if self.count > 1 else ""
        return f"refused {who} on {self.endpoint}: {self.reason}{times}"


class _AllowList:
    """The ZAP credentials provider: a client key is in, or it is refused."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class _GateThread(AuthenticationThread):
    """pyzmq's ZAP thread, also reading the monitors of the sockets it guards.

    Monitor sockets are created here, in the thread that reads them; the socket being
    watched only publishes its events to an inproc address.
    """

    def __init__(self, gate: Gate, pipe: zmq.Socket[Any]) -> None:
        super().__init__(authenticator=gate, pipe=pipe)
        self.gate = gate
        self.monitors: dict[zmq.Socket[Any], str] = {}

    async def _run(self) -> None:
        self.poller = zmq.asyncio.Poller()
        self.poller.register(self.pipe, zmq.POLLIN)
        self.poller.register(self.authenticator.zap_socket, zmq.POLLIN)
        self.started.set()
        try:
            while True:
                events = dict(await self.poller.poll())
                if self.pipe in events and self._handle_pipe_message(self.pipe.recv_multipart()):
                    return
                if self.authenticator.zap_socket in events:
                    msg = self.authenticator.zap_socket.recv_multipart()
                    await self.authenticator.handle_zap_message(msg)
                for monitor, endpoint in list(self.monitors.items()):
                    if monitor in events:
                        self.gate.on_monitor_event(endpoint, monitor.recv_multipart())
        finally:
            for monitor in self.monitors:
                monitor.close(linger=0)
            self.monitors.clear()

    def _handle_pipe_message(self, msg: list[bytes]) -> bool:
        if msg[0] == b"WATCH" and len(msg) == 3:
            monitor = self.gate.context.socket(zmq.PAIR, socket_class=zmq.Socket)
            monitor.setsockopt(zmq.LINGER, 0)
            monitor.connect(msg[1].decode())
            self.monitors[monitor] = msg[2].decode()
            assert self.poller is not None
            self.poller.register(monitor, zmq.POLLIN)
            self.pipe.send(b"OK")
            return False
        return bool(super()._handle_pipe_message(msg))


# implements: SR-SEC-001
class Gate(ThreadAuthenticator):
    """The ZAP handler of one process's Curve servers; every refusal is counted and reported.

    Use as a context manager in the context whose sockets it guards (one per context, as
    ZAP binds `inproc://zeromq.zap.01`). `report` is called from the gate's thread with
    each refusal; it must be thread-safe (a queue the node's heartbeat thread drains).
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        curve: CurveConfig,
        *,
        report: Callable[[Refusal], None],
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        super().__init__(context=ctx)
        self._keys = _AllowList(frozenset(load_public(path) for path in curve.allowed))
        self._report = report
        self._clock = clock
        self._request: tuple[str, str, str] = ("", "", "")
        self._seen: dict[tuple[str, str, str, str], tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.refused = 0
        # pyzmq's own debug lines stay on its stdlib logger; refusals go to structlog.
        self._events = structlog.get_logger(component="zap")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bind the ZAP socket and start the gate's thread."""
        # Same steps as ThreadAuthenticator.start, with the thread that also reads monitors.
        super(ThreadAuthenticator, self).start()
        self.pipe = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        self.pipe.linger = 1
        self.pipe.bind(self.pipe_endpoint)
        thread_pipe = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        thread_pipe.linger = 1
        thread_pipe.connect(self.pipe_endpoint)
        self.thread = _GateThread(self, thread_pipe)
        self.thread.start()
        if not self.thread.started.wait(timeout=10):
            raise RuntimeError("the ZAP thread did not start")

    def watch(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        """Guard a Curve server socket: its ZAP domain is `endpoint`, its failures reported."""
        self.configure_curve_callback(domain=endpoint, credentials_provider=self._keys)
        address = f"inproc://vigil-gate-{id(self)}-{id(sock)}"
        sock.monitor(address, _MONITORED)
        self.pipe.send_multipart([b"WATCH", address.encode(), endpoint.encode()])
        # Wait for the thread to connect, so no handshake failure goes unseen.
        if not self.pipe.poll(10_000):
            raise RuntimeError("the ZAP thread did not take the monitor")
        self.pipe.recv()

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Check one handshake; remember who asked, so a refusal can name them."""
        if len(msg) >= 6:
            key = z85.encode(msg[6]).decode() if msg[5] == b"CURVE" and len(msg) > 6 else ""
            self._request = (
                msg[2].decode("utf-8", "replace"),
                msg[3].decode("utf-8", "replace"),
                key,
            )
        else:
            self._request = ("", "", "")
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self,
        request_id: bytes,
        status_code: bytes,
        status_text: bytes,
        user_id: str = "anonymous",
    ) -> None:
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
        if status_code != b"200":
            endpoint, peer, key = self._request
            self._refuse(endpoint, peer, key, status_text.decode("utf-8", "replace").lower())

    def on_monitor_event(self, endpoint: str, frames: list[bytes]) -> None:
        """A handshake failed before ZAP was asked (no Curve, or the wrong server key)."""
        event = parse_monitor_message(frames)
        value = int(event["value"])
        reason = _PROTOCOL_ERRORS.get(value, f"handshake failed ({value:#x})")
        self._refuse(endpoint, "", "", reason.replace("_", " "))

    def _refuse(self, endpoint: str, peer: str, key: str, reason: str) -> None:
        now = self._clock()
        what = (endpoint, peer, key, reason)
        with self._lock:
            self.refused += 1
            if len(self._seen) >= _MAX_TRACKED and what not in self._seen:
                self._seen.clear()
            count, last = self._seen.get(what, (0, 0))
            count += 1
            if last and now - last < _REPORT_EVERY_NS:
                self._seen[what] = (count, last)
                return
            self._seen[what] = (0, now)
        refusal = Refusal(endpoint=endpoint, peer=peer, key=key, reason=reason, count=count)
        self._events.warning("bus.auth_refused", message=refusal.describe(), refused=self.refused)
        self._report(refusal)
