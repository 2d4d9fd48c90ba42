"""What every node process shares: identity, the bus, signals, heartbeats and readiness."""

from __future__ import annotations

import math
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec
import psutil
import structlog
import zmq

from vigil.bus.clock import to_next_tick, use_offset_file
from vigil.bus.curve import Gate, Refusal, secure
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import TraceContext
from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir, resolve_endpoint
from vigil.bus.signals import SignalWakeup
from vigil.nodes._logging import LogStream, current_trace, log_stream, trace_fields
from vigil.nodes.contract import NodeArgs, NodeContract
from vigil.schemas import (
    CONTROL_TOPICS,
    TOPICS,
    AuditEvent,
    AuditId,
    BusProbe,
    DiagCode,
    DiagnosticEvent,
    Heartbeat,
    LogRecord,
    NodeReady,
    Severity,
    Topic,
)

__all__ = ["IDLE_POLL_MS", "HeartbeatThread", "Node"]


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The structlog level of each diagnostic's local line.
_DIAG_LEVELS = {
    Severity.INFO: "info",
    Severity.WARNING: "warning",
    Severity.ERROR: "error",
    Severity.CRITICAL: "critical",
}
# How long a starting node waits for its publications to come back through the proxy, and
# how often it asks again meanwhile.
_JOIN_TIMEOUT_S = 10.0
_JOIN_PROBE_MS = 10
# The longest an idle node loop sleeps in poll: signals and sockets wake it at once anyway.
IDLE_POLL_MS = 1000.0


# implements: SR-HB-001
class HeartbeatThread(threading.Thread):
    """Publishes the node's heartbeat from its own thread and socket.

    Liveness must not depend on the node loop: a worker deep in a long batch is alive. The
    beat carries how long the loop has been away from its poll (`loop_age_ms`; 0 while it
    waits there), so a stuck loop is still visible; a stopped or killed process stops beating
    altogether.
    """

    def __init__(self, node: Node) -> None:
        super().__init__(name=f"heartbeat-{node.args.label}", daemon=True)
        self._node = node
        self._stop_event = threading.Event()
        self._final: dict[str, str] | None = None
        self._log_failing = False

    def run(self) -> None:
        node = self._node
        period = node.args.heartbeat_ms / 1000
        with Publisher(
            node.ctx,
            node.pub_endpoint,
            source=node.args.name,
            instance=node.args.instance,
            curve=node.args.curve,
        ) as pub:
            while True:
                stopping = self._stop_event.is_set()
                # Refusals are seen on the ZAP thread; this thread owns a publisher already.
                for event in node.refusal_events():
                    pub.publish(Topic.DIAGNOSTIC, event)
                    # A refused peer is a security event: audited as well as diagnosed.
                    pub.publish(
                        Topic.AUDIT,
                        AuditEvent(
                            event=AuditId.AUTH_REFUSED,
                            node=event.node,
                            instance=event.instance,
                            detail=f"{event.rule}: {event.message}"[:1024],
                            instance_id=node.args.instance_id,
                        ),
                    )
                detail = dict(node.heartbeat_detail)
                stream = log_stream()
                if stream is not None and stream.dropped:
                    self._report_log(pub, stream)
                    detail["log_lost"] = str(stream.dropped)
                detail["loop_age_ms"] = str(node.loop_age_ns() // 1_000_000)
                if stopping:
                    detail["lifecycle"] = "stopping"
                pub.publish(
                    Topic.HEARTBEAT,
                    Heartbeat(
                        node=node.args.label,
                        instance=node.args.instance,
                        pid=os.getpid(),
                        period_ms=node.args.heartbeat_ms,
                        kind=node.args.kind,
                        detail=detail,
                    ),
                )
                if stopping:
                    # The last beat says the node stops on purpose, so the watchdog stops
                    # watching it instead of reporting a missing heartbeat; let it leave.
                    pub.socket.setsockopt(zmq.LINGER, 200)
                    return
                self._stop_event.wait(to_next_tick(period))

    def _report_log(self, pub: Publisher, stream: LogStream) -> None:
        """Say once when the node's log lines start to be lost (a full disk) and once when
        they are written again: the node serves on either way."""
        failing = stream.errno != 0
        if failing == self._log_failing:
            return
        self._log_failing = failing
        node = self._node
        message = (
            f"log writes fail ({os.strerror(stream.errno)}): {stream.dropped} lines lost so far;"
            " serving goes on"
            if failing
            else f"log writes succeed again; {stream.dropped} lines were lost"
        )
        pub.publish(
            Topic.DIAGNOSTIC,
            DiagnosticEvent(
                code=DiagCode.DISK_FULL,
                severity=Severity.ERROR if failing else Severity.INFO,
                node=node.args.label,
                instance=node.args.instance,
                message=message,
                field="log",
            ),
        )

    def stop(self) -> None:
        """Send the final 'stopping' beat and end the thread."""
        self._stop_event.set()
        self.join()


# implements: SR-SUP-007
class _SupervisorWatch:
    """Watches the launcher's process through a pidfd: readable once the launcher is gone.

    Nodes run in their own process groups, so a terminal's hang-up or a killed launcher
    reaches none of them; without this they would serve on unsupervised, or (with a
    parent-death signal) all stop at once. Once the launcher is gone each node waits until
    every node started after it has exited (their pids are in the run's graph), so they stop
    in reverse start order and the logger, second only to the proxy, seals what the others
    said. A node that never exits holds up the next only until `stop_after_ms` (its place in
    that order) has passed ten times over; without a graph to read, `stop_after_ms` alone
    orders them.
    """

    def __init__(self, pid: int, label: str, run: RunDir, stop_after_ms: int) -> None:
        self.fd = -1
        self.lost_at: int | None = None
        self._label = label
        self._run = run
        self._delay_ns = stop_after_ms * 1_000_000
        self._cap_ns = 10 * self._delay_ns
        self._later: list[int] | None = None  # pids of the nodes started after this one
        self._poller: zmq.Poller | None = None
        if pid:
            try:
                self.fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.fd = -2  # gone before this node even looked: lost at the first poll

    def register(self, poller: zmq.Poller) -> None:
        """Add the pidfd to a poller."""
        if self.fd >= 0:
            poller.register(self.fd, zmq.POLLIN)
            self._poller = poller

    def handle(self, events: dict[Any, int], now_ns: int) -> bool:
        """Take the pidfd out of a poll's `events`; True the first time the launcher is lost."""
        if self.lost_at is not None:
            return False
        if self.fd == -2 or (self.fd >= 0 and events.pop(self.fd, 0)):
            self.lost_at = now_ns
            if self._poller is not None:  # it stays readable: no more busy wake-ups
                self._poller.unregister(self.fd)
            self._later = self._started_after()
            return True
        return False

    def _started_after(self) -> list[int] | None:
        """The pids of the nodes started after this one (None: no graph to tell)."""
        try:
            names = [(n.name, n.pid) for n in self._run.read_graph().nodes]
        except (OSError, ValueError):  # no graph, or a torn one: order by time alone
            return None
        labels = [name for name, _ in names]
        if self._label not in labels:
            return None
        return [pid for _, pid in names[labels.index(self._label) + 1 :] if pid]

    def stop_due(self, now_ns: int) -> bool:
        """Whether this node's turn to stop has come."""
        if self.lost_at is None:
            return False
        waited = now_ns - self.lost_at
        if self._later is None:
            return waited >= self._delay_ns
        return waited >= self._cap_ns or not any(_alive(pid) for pid in self._later)

    def wait_ms(self, now_ns: int, wait_ms: float) -> float:
        """`wait_ms`, cut short so that the loop looks again soon once the launcher is gone."""
        if self.lost_at is None:
            return wait_ms
        if self._later is None:
            return max(0.0, min(wait_ms, (self.lost_at + self._delay_ns - now_ns) / 1e6))
        return min(wait_ms, 20.0)

    def close(self) -> None:
        """Close the pidfd."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie whose parent died, waiting to be reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Node:
    """Owns a node's zmq context, its bus publisher, its poller, signals and heartbeat.

    A node loop is `while not node.stopping: events = node.poll(timeout_ms)`; `poll` wakes on
    sockets, on SIGTERM/SIGINT (through a wake-up fd, so a signal never waits for a timeout)
    and when the heartbeat is due, which it publishes itself.
    """

    def __init__(
        self,
        args: NodeArgs,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.args = args
        self.run = RunDir(args.run_dir, create=False)
        self.clock = clock
        if args.clock_offset_file:
            use_offset_file(args.clock_offset_file)
        self._stack = ExitStack()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = self._stack.enter_context(zmq.Context())
        self.pub_endpoint = args.pub_endpoint or self.run.pub
        self.sub_endpoint = args.sub_endpoint or self.run.sub
        self.refusals: queue.SimpleQueue[Refusal] = queue.SimpleQueue()
        self.gate: Gate | None = None
        if args.curve is not None and args.curve.server_secret:
            self.gate = self._stack.enter_context(
                Gate(self.ctx, args.curve, report=self.refusals.put)
            )
        self.publisher = self._stack.enter_context(
            Publisher(
                self.ctx,
                self.pub_endpoint,
                source=args.name,
                instance=args.instance,
                curve=args.curve,
            )
        )
        self.poller = zmq.Poller()
        # Made here so that the poller knows it; the handlers are installed on entering.
        self._signals = SignalWakeup(_STOP_SIGNALS)
        self._stack.callback(self._signals.close)
        self._signals.register(self.poller)
        self._supervisor = _SupervisorWatch(
            args.supervisor_pid, args.label, self.run, args.stop_after_ms
        )
        self._stack.callback(self._supervisor.close)
        self._supervisor.register(self.poller)
        self.loop_ns = clock()
        self._waiting = False  # the loop sits in poll(): idle, not stuck
        self.heartbeat_detail: dict[str, str] = {}
        # The topics its subscribers take, announced by `ready` as what the node really does.
        self.subscribed: set[str] = set()
        self._heartbeat = HeartbeatThread(self)
        self.log = structlog.get_logger(node=args.label, kind=args.kind)

    def __enter__(self) -> Self:
        self._signals.install()
        self._heartbeat.start()
        self._stack.callback(self._heartbeat.stop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    # implements: SR-SUP-003
    @property
    def stopping(self) -> bool:
        """Whether SIGTERM or SIGINT arrived, or the launcher is gone and this node's turn to
        stop has come: the loop then drains and the node exits."""
        return bool(self._signals.received) or self._supervisor.stop_due(self.clock())

    @property
    def stop_reason(self) -> str:
        """The name of the stop signal that arrived first, why the node stops without one,
        or "" while running."""
        first = self._signals.first()
        if first is not None:
            return first.name
        return "launcher gone" if self._supervisor.lost_at is not None else ""

    def enter(self, cm: Any) -> Any:
        """Let the node own a socket or resource: closed when the node exits, on every path."""
        return self._stack.enter_context(cm)

    def socket(
        self, kind: int, *, linger_ms: int = 0, serve: str = "", dial: str = ""
    ) -> zmq.Socket[bytes]:
        """A new socket owned by this node, with LINGER set explicitly.

        `serve`/`dial` name the endpoint it will bind/connect to: on tcp it is then made a
        Curve server (guarded by ZAP) or client before it is used.
        """
        sock: zmq.Socket[bytes] = self._stack.enter_context(self.ctx.socket(kind))
        sock.setsockopt(zmq.LINGER, linger_ms)
        if serve:
            secure(sock, resolve_endpoint(self.run, serve), self.args.curve, "server", self.gate)
        elif dial:
            secure(sock, resolve_endpoint(self.run, dial), self.args.curve, "client")
        return sock

    def refusal_events(self) -> list[DiagnosticEvent]:
        """Diagnostics for the handshakes refused since the last call (any thread may ask)."""
        events: list[DiagnosticEvent] = []
        while True:
            try:
                refusal = self.refusals.get_nowait()
            except queue.Empty:
                return events
            events.append(
                DiagnosticEvent(
                    code=DiagCode.AUTH_REFUSED,
                    severity=Severity.WARNING,
                    node=self.args.label,
                    instance=self.args.instance,
                    message=refusal.describe()[:512],
                    field=refusal.endpoint[:128],
                    rule=refusal.reason[:256],
                )
            )

    def subscriber(
        self,
        topics: list[str],
        *,
        prefix: bool = False,
        strict: bool = False,
        skip_replayed: bool | Collection[str] = CONTROL_TOPICS,
        wake: bool = True,
    ) -> Subscriber:
        """A subscriber on the proxy, owned by this node and registered with its poller.

        A `prefix` subscription takes every catalogued topic that one of `topics` begins.
        Replayed messages (`vigil bag play`) on control topics are left out by default: a live
        node follows the live system's liveness, state and model, never a recording's.
        Without `wake`, its messages never wake the loop: the node drains it on the turns it
        takes anyway (frequent, periodic traffic such as heartbeats then costs no wake-up).
        """
        sub: Subscriber = self._stack.enter_context(
            Subscriber(
                self.ctx,
                self.sub_endpoint,
                topics,
                prefix=prefix,
                curve=self.args.curve,
                strict=strict,
                skip_replayed=skip_replayed,
            )
        )
        if wake:
            self.poller.register(sub.socket, zmq.POLLIN)
        if prefix:
            self.subscribed.update(t for t in TOPICS if t.startswith(tuple(topics)))
        else:
            self.subscribed.update(topics)
        return sub

    def resolve(self, path: str) -> Path:
        """A configured path: absolute as given, else relative to the run directory."""
        p = Path(path)
        return p if p.is_absolute() else self.run.path / p

    def ready(
        self,
        contract: NodeContract,
        *,
        endpoints: dict[str, str] | None = None,
        join: bool = True,
    ) -> None:
        """Tell the launcher this node is up (its sockets bound or connected).

        It announces the topics its `contract` publishes, the topics its subscribers really
        take, and the contract's endpoints as resolved here, with any `endpoints` the
        configuration does not name (the proxy's, the metrics page). With `join`, it first
        waits until the node's publications reach subscribers (see `join_bus`); only the
        proxy itself, which carries the round trip, skips it.
        """
        if join:
            self.join_bus()
        declared = {e.key: resolve_endpoint(self.run, e.name) for e in contract.endpoints if e.key}
        with self.ctx.socket(zmq.PUSH) as push:
            push.setsockopt(zmq.LINGER, 2000)
            push.connect(self.run.control)
            report = NodeReady(
                name=self.args.name,
                instance=self.args.instance,
                pid=os.getpid(),
                kind=self.args.kind,
                publishes=sorted(contract.publishes),
                subscribes=sorted(self.subscribed),
                endpoints={**declared, **(endpoints or {})},
            )
            push.send(msgspec.msgpack.encode(report))
        # Also on the bus: the logger then knows this publisher from its first message on, and
        # can count anything of it that it misses later (a gap).
        self.record("info", "node.ready", pid=os.getpid())

    # implements: SR-WDG-003
    def join_bus(self, timeout_s: float = _JOIN_TIMEOUT_S) -> bool:
        """Wait until a probe from this node's publisher comes back through the proxy.

        A PUB socket drops what no subscriber has asked for, and the proxy's subscriptions
        reach a new publisher only after its connection's handshake (tens of ms with Curve
        on a loaded host). A latched value published before then (the first committed model,
        the first safety state) would be lost for every late joiner. The proxy sends a new
        publisher all its subscriptions at once, latched topics included, so one round trip
        proves they have arrived. False when the proxy did not answer in time (logged).
        """
        nonce = secrets.randbits(62)
        probe = BusProbe(node=self.args.label, nonce=nonce)
        deadline = Deadline.after(int(timeout_s * 1e9), time.monotonic_ns())
        with Subscriber(
            self.ctx, self.sub_endpoint, [Topic.BUS_PROBE], curve=self.args.curve
        ) as echo:
            while not self.stopping and not deadline.expired(time.monotonic_ns()):
                self.publisher.publish(Topic.BUS_PROBE, probe)
                got = echo.recv(_JOIN_PROBE_MS)
                while got is not None:
                    if isinstance(got.body, BusProbe) and got.body.nonce == nonce:
                        return True
                    got = echo.recv(0)
        self.log.warning("bus.join_timeout", timeout_s=timeout_s, stopping=self.stopping)
        return False

    def poll(self, timeout_ms: float | None = None) -> dict[Any, int]:
        """Wait for socket events or a stop signal (at most `timeout_ms`; None: nothing is
        due, so up to `IDLE_POLL_MS`).

        An idle node sleeps here instead of waking on a short tick: its cost does not depend
        on traffic, and every wake-up is one the machine's inference cores do not lose.
        """
        wait = IDLE_POLL_MS if timeout_ms is None else timeout_ms
        wait = self._supervisor.wait_ms(self.clock(), wait)
        self._waiting = True
        try:
            events = dict(self.poller.poll(math.ceil(wait)))
        finally:
            self._waiting = False
            self.loop_ns = self.clock()
        self._signals.handle(events)
        if self._supervisor.handle(events, self.clock()):
            self._supervisor_lost()
        return events

    def _supervisor_lost(self) -> None:
        """The launcher is gone: say so (the logger, last but the proxy to stop, seals it)."""
        self.diag(
            DiagCode.SUPERVISOR_LOST,
            f"launcher (pid {self.args.supervisor_pid}) gone; stopping in reverse start order",
            severity=Severity.CRITICAL,
        )

    def loop_age_ns(self) -> int:
        """How long the loop has been busy since it last returned from `poll` (0 while it
        waits in `poll`): what a stuck loop shows, read from the heartbeat thread."""
        if self._waiting:
            return 0
        return max(0, self.clock() - self.loop_ns)

    def diag(
        self,
        code: DiagCode,
        message: str,
        *,
        severity: Severity = Severity.WARNING,
        field: str = "",
        rule: str = "",
        stream_id: str = "",
        trace: TraceContext | None = None,
        peer: str = "",
        count: int = 1,
        first_trace_id: bytes = b"",
        last_trace_id: bytes = b"",
    ) -> None:
        """Publish a diagnostic event (the logger seals it) and log it locally, in `trace`
        (or the one bound by an enclosing `traced()` block). `peer`, `count` and the first
        and last trace name the client and the events an aggregate stands for."""
        if trace is None:
            trace = current_trace()
        getattr(self.log, _DIAG_LEVELS.get(severity, "warning"))(
            "diag", code=str(code), message=message, field=field, rule=rule, stream_id=stream_id,
            **({"peer": peer, "count": count} if peer else {}), **trace_fields(trace),
        )  # fmt: skip
        self.publisher.publish(
            Topic.DIAGNOSTIC,
            DiagnosticEvent(
                code=code,
                severity=severity,
                node=self.args.label,
                instance=self.args.instance,
                message=message[:512],
                field=field[:128],
                rule=rule[:256],
                stream_id=stream_id,
                peer=peer[:128],
                count=count,
                first_trace_id=first_trace_id,
                last_trace_id=last_trace_id,
            ),
            trace=trace,
        )

    def audit(self, event: AuditId, detail: str = "", *, trace: TraceContext | None = None) -> None:
        """Publish an audit event for the sealed store."""
        self.publisher.publish(
            Topic.AUDIT,
            AuditEvent(
                event=event,
                node=self.args.label,
                instance=self.args.instance,
                detail=detail[:1024],
                instance_id=self.args.instance_id,
            ),
            trace=trace,
        )

    def record(
        self,
        level: str,
        event: str,
        *,
        trace: TraceContext | None = None,
        **fields: str | int | float | bool | None,
    ) -> None:
        """Log a structured record locally and send it to the logger over the bus.

        Without `trace`, the one bound by an enclosing `traced()` block is used.
        """
        if trace is None:
            trace = current_trace()
        ids = trace_fields(trace)
        getattr(self.log, level)(event, **{**fields, **ids})
        self.publisher.publish(
            Topic.LOG,
            LogRecord(
                level=level,
                event=event[:256],
                node=self.args.label,
                instance=self.args.instance,
                trace_id=ids.get("trace_id", ""),
                span_id=ids.get("span_id", ""),
                fields=fields,
            ),
            trace=trace,
        )
