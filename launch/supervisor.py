"""The launcher: start the proxy and every node, wait until each is ready, supervise, stop."""

from __future__ import annotations

import grp
import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

import msgspec
import structlog
import zmq

from vigil.bus.deadline import Deadline
from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import GraphNode, RunDir, RunGraph
from vigil.bus.signals import SignalWakeup
from vigil.errors import VigilError
from vigil.launch._privileges import NodeUser, PrivilegeError, child_setup, node_user
from vigil.launch.model import LaunchPlan, PlannedProcess
from vigil.nodes.contract import ExitCode
from vigil.schemas import (
    TOPICS,
    AuditEvent,
    AuditId,
    DiagCode,
    DiagnosticEvent,
    Heartbeat,
    NodeReady,
    SafetyState,
    Severity,
    StateChange,
    Topic,
    schema_id,
)

__all__ = ["LaunchError", "Launcher"]

# Files and sockets made by nodes stay private to the run directory's group.
_SHARED_UMASK = 0o007
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long the launcher waits to see its SAFE_STOP come back through the proxy (so the
# logger, subscribed to the same proxy, has it) before it stops the nodes.
_SAFE_STOP_ECHO_S = 2.0
_BEATS_BEFORE_RELEASE = 3
_RESEND_NS = 2_000_000_000
_RESEND_PERIOD_NS = 200_000_000


class LaunchError(VigilError):
    """A node never became ready, or a required node failed for good."""


@dataclass
class _Child:
    plan: PlannedProcess
    popen: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    ready: bool = False
    restarts: list[int] = field(default_factory=list)
    restart_at: int | None = None
    failed: bool = False
    pid: int = 0
    endpoints: dict[str, str] = field(default_factory=dict)
    publishes: list[str] = field(default_factory=list)
    subscribes: list[str] = field(default_factory=list)
    user: NodeUser | None = None


class Launcher:
    """Owns every node process of one run and the run directory's graph.

    Use as a context manager: leaving it stops every node in reverse start order (SIGINT,
    then SIGTERM and SIGKILL after each node's grace periods), whatever happened inside.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        run: RunDir,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        python: str = sys.executable,
    ) -> None:
        self.plan = plan
        self.run = run
        self.clock = clock
        self.python = python
        self.log = structlog.get_logger(node="launcher")
        self._stack = ExitStack()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = self._stack.enter_context(zmq.Context())
        self.control: zmq.Socket[bytes] = self._stack.enter_context(self.ctx.socket(zmq.PULL))
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(run.control)
        (run.path / "logs").mkdir(mode=0o700, exist_ok=True)
        self.pub_endpoint = plan.pub or run.pub
        self.sub_endpoint = plan.sub or run.sub
        self.publisher = self._stack.enter_context(
            Publisher(self.ctx, self.pub_endpoint, source="launcher", curve=plan.curve)
        )
        # The launcher listens to the safety state (to name the state it leaves on SAFE_STOP)
        # and to heartbeats (to know when the bus carries messages again after a proxy restart).
        self.bus = self._stack.enter_context(
            Subscriber(
                self.ctx,
                self.sub_endpoint,
                [Topic.SAFETY_STATE, Topic.HEARTBEAT],
                curve=plan.curve,
                skip_replayed=True,
            )
        )
        planned = [plan.proxy] if plan.proxy is not None else []
        self.children = [_Child(p) for p in [*planned, *plan.processes]]
        try:
            for child in self.children:
                if child.plan.spec.user:
                    child.user = node_user(child.plan.spec.user)
        except PrivilegeError as exc:
            self._stack.close()
            raise LaunchError(str(exc)) from exc
        self._share_run_dir()
        self.state: StateChange | None = None
        self.safe_stopped = False
        # Reports made while the proxy is down would be dropped by the PUB socket: they wait
        # until the restarted proxy carries heartbeats from every logger again.
        self._held: list[tuple[DiagnosticEvent, AuditEvent]] = []
        self._resend: list[tuple[int, list[Any]]] = []
        self._next_resend = 0
        self._beats_since_proxy: dict[str, int] = {}
        self._ended = ""
        self.failure: str | None = None
        # SIGCHLD only wakes the loop, which then reaps and restarts children.
        self._signals = SignalWakeup((*_STOP_SIGNALS, signal.SIGCHLD))
        self._stack.callback(self._signals.close)
        self.started_ns = time.time_ns()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._signals.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            self._stack.close()

    @property
    def stopping(self) -> bool:
        """Whether SIGTERM or SIGINT arrived: supervision ends and every node is stopped."""
        return self._signals.first(_STOP_SIGNALS) is not None

    @property
    def stop_reason(self) -> str:
        """The stop signal that arrived first, or why supervision ended without one."""
        first = self._signals.first(_STOP_SIGNALS)
        return first.name if first is not None else self._ended

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the proxy, then every node in file order, each ready before the next."""
        for child in self.children:
            self._spawn(child)
            self._await_ready(child)
        self.write_graph()
        self.log.info("launch.ready", nodes=len(self.children), run_dir=str(self.run.path))
        # Audited once every node is up, the logger included: what configuration runs, and
        # which process is which software instance.
        digest = hashlib.sha256(msgspec.json.encode(self.plan.launch)).hexdigest()
        given = " ".join(f"{k}:={v}" for k, v in self.plan.arguments.items())
        self._audit(
            AuditId.LAUNCH_CONFIGURED,
            f"config {digest[:16]} {self.plan.launch.name} from {self.plan.source} {given}",
        )
        for child in self.children:
            if child.ready:
                self._audit_started(child)

    def _share_run_dir(self) -> None:
        """Let nodes that run as an unprivileged user into the run directory.

        The directory stays closed to everyone else: it belongs to the nodes' group (mode
        2770, so files made inside inherit the group) and nodes start with umask 007.
        """
        groups = {c.user.gid for c in self.children if c.user is not None}
        if not groups:
            return
        if len(groups) > 1:
            raise LaunchError("nodes with user: must share one primary group (the run's group)")
        gid = groups.pop()
        for path in (self.run.path, self.run.path / "logs"):
            os.chown(path, -1, gid)
            os.chmod(path, 0o2770)
        control = self.run.control.removeprefix("ipc://")
        os.chown(control, -1, gid)
        os.chmod(control, 0o660)
        self.log.info("launch.run_dir_shared", group=grp.getgrgid(gid).gr_name)

    # implements: SR-SUP-002
    def _spawn(self, child: _Child) -> None:
        args = child.plan.args
        log_path = self.run.path / "logs" / f"{args.label}.log"
        if child.log is None:
            child.log = self._stack.enter_context(open(log_path, "ab"))  # noqa: SIM115
            if child.user is not None:
                os.chown(log_path, child.user.uid, child.user.gid)
        shared = any(c.user is not None for c in self.children)
        child.ready = False
        try:
            child.popen = self._popen(child, shared)
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"cannot start {args.label}: {exc}") from exc
        child.pid = child.popen.pid
        self.log.info("node.started", node=args.label, pid=child.pid)

    def _popen(self, child: _Child, shared: bool) -> subprocess.Popen[bytes]:
        args = child.plan.args
        spec = child.plan.spec
        return subprocess.Popen(
            [
                self.python,
                "-m",
                "vigil.nodes",
                msgspec.json.encode(args).decode(),
                msgspec.json.encode(child.plan.config).decode(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=child.log,
            stderr=child.log,
            # Its own process group: a terminal's Ctrl-C reaches only the launcher, which then
            # stops the nodes in order instead of all at once.
            process_group=0,
            user=child.user.uid if child.user else None,
            group=child.user.gid if child.user else None,
            extra_groups=[] if child.user else None,
            umask=_SHARED_UMASK if shared else -1,
            # Runs after the switch to the node's user: no_new_privs, limits, CPUs, nice.
            preexec_fn=child_setup(  # noqa: PLW1509 - only system calls between fork and exec
                address_space_mb=spec.limits.address_space_mb,
                open_files=spec.limits.open_files,
                core_dumps=spec.limits.core_dumps,
                cpu_affinity=spec.cpu_affinity,
                nice=spec.nice,
            ),
        )

    def _await_ready(self, child: _Child) -> None:
        """Wait until `child` is ready; a start-up crash is restarted like any other exit.

        LaunchError when it fails for good (a required node), never gets ready in time,
        or the launcher is interrupted. A node that is not required and fails for good is
        left out, and the launch goes on.
        """
        deadline = Deadline.after(int(self.plan.launch.ready_timeout_s * 1e9), self.clock())
        while not child.ready:
            if self.stopping:
                raise LaunchError(f"interrupted while starting {child.plan.label}")
            self._check_children(self.clock())
            if child.failed:
                if child.plan.spec.required:
                    raise LaunchError(
                        f"{child.plan.label} failed before ready; see"
                        f" {self.run.path / 'logs' / (child.plan.label + '.log')}"
                    )
                return
            left_ms = deadline.remaining_ns(self.clock()) / 1e6
            if left_ms <= 0:
                raise LaunchError(
                    f"{child.plan.label} not ready after {self.plan.launch.ready_timeout_s} s"
                )
            self._poll(min(left_ms, 100.0))

    def _poll(self, timeout_ms: float) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.bus.socket, zmq.POLLIN)
        self._signals.register(poller)
        events = dict(poller.poll(math.ceil(timeout_ms)))
        self._signals.handle(events)
        if events.get(self.control):
            while True:
                try:
                    raw = self.control.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_ready(msgspec.msgpack.decode(raw, type=NodeReady))
        if events.get(self.bus.socket):
            self._on_bus()

    def _on_bus(self) -> None:
        for _ in range(1024):
            received = self.bus.recv(0)
            if received is None:
                if not self.bus.socket.poll(0):
                    return
                continue
            body = received.body
            if isinstance(body, StateChange):
                self.state = body
            elif isinstance(body, Heartbeat) and self._held:
                self._beats_since_proxy[body.node] = self._beats_since_proxy.get(body.node, 0) + 1
                self._release_held()

    def _on_ready(self, report: NodeReady) -> None:
        for child in self.children:
            args = child.plan.args
            if args.name == report.name and args.instance == report.instance:
                child.ready = True
                child.endpoints = report.endpoints
                child.publishes = report.publishes
                child.subscribes = report.subscribes
                self.log.info("node.ready", node=args.label, pid=report.pid)
                if child is self._proxy_child():
                    self._beats_since_proxy.clear()
                if child.restarts:
                    self.write_graph()
                    if child is not self._proxy_child():
                        self._audit_started(child)
                return

    def _audit(self, event: AuditId, detail: str) -> None:
        self.publisher.publish(
            Topic.AUDIT, AuditEvent(event=event, node="launcher", detail=detail[:1024])
        )

    def _audit_started(self, child: _Child) -> None:
        args = child.plan.args
        self._audit(
            AuditId.NODE_STARTED,
            f"{args.label} id {args.instance_id} pid {child.pid} kind {args.kind}",
        )

    def _proxy_child(self) -> _Child | None:
        return self.children[0] if self.plan.proxy is not None else None

    def _release_held(self) -> None:
        proxy = self._proxy_child()
        if proxy is None or not proxy.ready:
            return
        loggers = {c.plan.label for c in self.children if c.plan.spec.kind == "logger" and c.ready}
        # A logger's first beat through the new proxy shows its publisher reconnected; its
        # subscriber reconnects on the same 100 ms timer, so a few beats later its
        # subscription has reached this launcher's publisher too.
        if any(self._beats_since_proxy.get(label, 0) < _BEATS_BEFORE_RELEASE for label in loggers):
            return
        held, self._held = self._held, []
        # Whether the new proxy has passed every subscription on to this publisher yet cannot
        # be seen from here: send each report, then send the very same frames again for a
        # while. Receivers drop the repeats by their sequence number.
        until = self.clock() + _RESEND_NS
        for diag, audit in held:
            for topic, body in ((Topic.DIAGNOSTIC, diag), (Topic.AUDIT, audit)):
                frames = self.publisher.encode(topic, body)
                self.publisher.publish_raw(frames)
                self._resend.append((until, frames))

    def _resend_held(self) -> None:
        """Repeat recently released reports until their window closes."""
        now = self.clock()
        if not self._resend or now < self._next_resend:
            return
        self._next_resend = now + _RESEND_PERIOD_NS
        self._resend = [(until, frames) for until, frames in self._resend if until > now]
        for _, frames in self._resend:
            self.publisher.publish_raw(frames)

    # -- supervise -------------------------------------------------------------------------

    def supervise(self, duration_s: float | None = None) -> int:
        """Watch every node until a signal, `duration_s`, or a required node's final failure.

        Returns the launcher's exit code: 0 for a clean run, 1 when a required node failed.
        """
        until = None if duration_s is None else Deadline.after(int(duration_s * 1e9), self.clock())
        while not self.stopping and self.failure is None:
            now = self.clock()
            if until is not None and until.expired(now):
                self._ended = "duration elapsed"
                break
            self._check_children(now)
            self._resend_held()
            wait = 100.0 if until is None else max(0.0, min(100.0, until.remaining_ns(now) / 1e6))
            self._poll(wait)
        if self.failure is not None and not self.safe_stopped:
            self._safe_stop(self.failure)
        return 1 if self.failure else 0

    def _safe_stop(self, cause: str) -> None:
        """Bring the system to SAFE_STOP: publish it (latched), audit it, then return so the
        caller stops every node in order."""
        self.safe_stopped = True
        previous = self.state.state if self.state is not None else SafetyState.NORMAL
        change = StateChange(
            state=SafetyState.SAFE_STOP,
            previous=previous,
            cause=cause[:256],
            since_ns=time.time_ns(),
            transitions=(self.state.transitions + 1) if self.state is not None else 1,
        )
        self.log.error("launch.safe_stop", cause=cause, previous=str(previous))
        self.publisher.publish(Topic.SAFETY_STATE, change)
        self.publisher.publish(
            Topic.AUDIT,
            AuditEvent(
                event=AuditId.STATE_TRANSITION,
                node="launcher",
                detail=f"{previous} -> SAFE_STOP: {cause}"[:1024],
            ),
        )
        # Stop only once the proxy has carried it: the logger then has it too.
        deadline = Deadline.after(int(_SAFE_STOP_ECHO_S * 1e9), self.clock())
        while not deadline.expired(self.clock()):
            self._poll(50.0)
            if self.state is not None and self.state.state is SafetyState.SAFE_STOP:
                return

    def _check_children(self, now: int) -> None:
        for child in self.children:
            if child.failed:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    self._spawn(child)
                continue
            popen = child.popen
            if popen is None or popen.poll() is None:
                continue
            self._on_exit(child, popen.returncode, now)

    # implements: SR-SUP-001
    def _on_exit(self, child: _Child, code: int, now: int) -> None:
        spec = child.plan.spec
        label = child.plan.label
        policy = spec.restart
        window_ns = int(policy.window_s * 1e9)
        child.restarts = [t for t in child.restarts if now - t < window_ns]
        child.ready = False
        self.log.warning("node.exited", node=label, code=code)
        if child is self._proxy_child():
            self._beats_since_proxy.clear()
        # A configuration refused at start (bad config, root not allowed) fails the same way
        # every time: restarting it would only hide the cause.
        permanent = code == ExitCode.CONFIG
        if not permanent and len(child.restarts) < policy.max_restarts:
            backoff_ms = min(
                policy.backoff_max_ms, policy.backoff_initial_ms * 2 ** len(child.restarts)
            )
            child.restarts.append(now)
            child.restart_at = now + backoff_ms * 1_000_000
            self._report(
                DiagCode.NODE_RESTARTED,
                AuditId.NODE_RESTARTED,
                f"{label} exited with code {code}; restart {len(child.restarts)} "
                f"in {backoff_ms} ms",
            )
            return
        child.failed = True
        why = (
            "its configuration was refused (not restarted)"
            if permanent
            else f"{policy.max_restarts} restarts in {policy.window_s} s used up"
        )
        self._report(
            DiagCode.NODE_RESTARTED,
            AuditId.NODE_FAILED,
            f"{label} exited with code {code}; {why}",
            severity=Severity.CRITICAL,
        )
        if spec.required:
            self.failure = f"required node {label} failed permanently (exit code {code})"

    def _report(
        self, code: DiagCode, audit: AuditId, message: str, *, severity: Severity = Severity.ERROR
    ) -> None:
        self.log.warning("launch.supervision", message=message)
        diag = DiagnosticEvent(code=code, severity=severity, node="launcher", message=message[:512])
        event = AuditEvent(event=audit, node="launcher", detail=message[:1024])
        proxy = self._proxy_child()
        if self._held or (proxy is not None and not proxy.ready):
            self._held.append((diag, event))
            return
        self.publisher.publish(Topic.DIAGNOSTIC, diag)
        self.publisher.publish(Topic.AUDIT, event)

    # -- stop ------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop nodes in reverse start order, each down the ladder of `stop`."""
        for child in reversed(self.children):
            child.restart_at = None
            self.stop(child)

    def stop(self, child: _Child) -> None:
        """Stop one node as ROS 2 launch does: SIGINT; SIGTERM when it has not exited within
        `stop_grace_ms`; SIGKILL when it has not exited `kill_grace_ms` after that."""
        popen = child.popen
        if popen is None or popen.poll() is not None:
            return
        spec = child.plan.spec
        for sig, grace_ms in (
            (signal.SIGINT, spec.stop_grace_ms),
            (signal.SIGTERM, spec.kill_grace_ms),
        ):
            self.log.info("node.signalled", node=child.plan.label, signal=sig.name)
            popen.send_signal(sig)
            try:
                popen.wait(timeout=grace_ms / 1000)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            self.log.warning("node.killed", node=child.plan.label)
            popen.kill()
            popen.wait()
        self.log.info("node.stopped", node=child.plan.label, code=popen.returncode)
        if child is not self._proxy_child():
            args = child.plan.args
            self._audit(
                AuditId.NODE_STOPPED,
                f"{args.label} id {args.instance_id} exit {popen.returncode}",
            )

    # -- graph -----------------------------------------------------------------------------

    def write_graph(self) -> None:
        """Write graph.json: nodes, pids, endpoints, topics and their types."""
        endpoints = {
            "pub": self.pub_endpoint,
            "sub": self.sub_endpoint,
            "control": self.run.control,
        }
        for child in self.children:
            for key, value in child.endpoints.items():
                endpoints.setdefault(f"{child.plan.label}.{key}", value)
        self.run.write_graph(
            RunGraph(
                launch_file=self.plan.source,
                launcher_pid=os.getpid(),
                started_ns=self.started_ns,
                endpoints=endpoints,
                topics={topic: schema_id(cls) for topic, cls in TOPICS.items()},
                nodes=[
                    GraphNode(
                        name=c.plan.label,
                        kind=c.plan.spec.kind,
                        instance=c.plan.args.instance,
                        pid=c.pid,
                        publishes=c.publishes,
                        subscribes=c.subscribes,
                        endpoints=c.endpoints,
                        restarts=len(c.restarts),
                        host=c.plan.args.host,
                    )
                    for c in self.children
                ],
                server_key=self.plan.curve.server_key if self.plan.curve is not None else "",
            )
        )
