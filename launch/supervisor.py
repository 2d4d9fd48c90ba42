"""The launcher: start the proxy and every node, wait until each is ready, supervise, stop."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import IO, Self

import msgspec
import structlog
import zmq

from vigil.bus.pubsub import Publisher
from vigil.bus.rundir import GraphNode, RunDir, RunGraph
from vigil.errors import VigilError
from vigil.launch.model import LaunchPlan, NodeSpec, PlannedProcess
from vigil.nodes._runtime import NodeArgs
from vigil.schemas import (
    TOPICS,
    AuditEvent,
    AuditId,
    DiagCode,
    DiagnosticEvent,
    NodeReady,
    Severity,
    Topic,
    schema_id,
)

__all__ = ["LaunchError", "Launcher"]

_PR_SET_PDEATHSIG = 1
_PROXY_SPEC = NodeSpec(name="proxy", kind="proxy", required=True)


class LaunchError(VigilError):
    """A node never became ready, or a required node failed for good."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A node must not outlive a launcher that was SIGKILLed.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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


class Launcher:
    """Owns every node process of one run and the run directory's graph.

    Use as a context manager: leaving it stops every node (SIGTERM in reverse start order,
    SIGKILL after each node's grace period), whatever happened inside.
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
        self.publisher = self._stack.enter_context(Publisher(self.ctx, run.pub, source="launcher"))
        (run.path / "logs").mkdir(mode=0o700, exist_ok=True)
        proxy_args = NodeArgs(
            name="proxy",
            kind="proxy",
            run_dir=str(run.path),
            heartbeat_ms=plan.launch.heartbeat_ms,
        )
        proxy = PlannedProcess(spec=_PROXY_SPEC, args=proxy_args, config={})
        self.children = [_Child(proxy), *(_Child(p) for p in plan.processes)]
        self.stopping = False
        self.stop_reason = ""
        self.failure: str | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stack.callback(self._wake_r.close)
        self._stack.callback(self._wake_w.close)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.started_ns = time.time_ns()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        previous_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._stack.callback(signal.set_wakeup_fd, previous_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            previous = signal.signal(sig, self._on_signal)
            self._stack.callback(signal.signal, sig, previous)
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

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.stopping = True
            self.stop_reason = signal.Signals(signum).name

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the proxy, then every node in file order, each ready before the next."""
        for child in self.children:
            self._spawn(child)
            self._await_ready(child)
        self.write_graph()
        self.log.info("launch.ready", nodes=len(self.children), run_dir=str(self.run.path))

    def _spawn(self, child: _Child) -> None:
        args = child.plan.args
        if child.log is None:
            child.log = self._stack.enter_context(
                open(self.run.path / "logs" / f"{args.label}.log", "ab")  # noqa: SIM115
            )
        child.ready = False
        child.popen = subprocess.Popen(
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
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded, async-signal-safe
        )
        child.pid = child.popen.pid
        self.log.info("node.started", node=args.label, pid=child.pid)

    def _await_ready(self, child: _Child) -> None:
        deadline = self.clock() + int(self.plan.launch.ready_timeout_s * 1e9)
        while not child.ready:
            if self.stopping:
                raise LaunchError(f"interrupted while starting {child.plan.label}")
            assert child.popen is not None
            if child.popen.poll() is not None:
                raise LaunchError(
                    f"{child.plan.label} exited with code {child.popen.returncode} before ready;"
                    f" see {self.run.path / 'logs' / (child.plan.label + '.log')}"
                )
            left_ms = (deadline - self.clock()) / 1e6
            if left_ms <= 0:
                raise LaunchError(
                    f"{child.plan.label} not ready after {self.plan.launch.ready_timeout_s} s"
                )
            self._poll(min(left_ms, 100.0))

    def _poll(self, timeout_ms: float) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        events = dict(poller.poll(math.ceil(timeout_ms)))
        if events.get(self._wake_r.fileno()):
            try:
                while self._wake_r.recv(64):
                    pass
            except BlockingIOError:
                pass
        if events.get(self.control):
            while True:
                try:
                    raw = self.control.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_ready(msgspec.msgpack.decode(raw, type=NodeReady))

    def _on_ready(self, report: NodeReady) -> None:
        for child in self.children:
            args = child.plan.args
            if args.name == report.name and args.instance == report.instance:
                child.ready = True
                child.endpoints = report.endpoints
                child.publishes = report.publishes
                child.subscribes = report.subscribes
                self.log.info("node.ready", node=args.label, pid=report.pid)
                if child.restarts:
                    self.write_graph()
                return

    # -- supervise -------------------------------------------------------------------------

    def supervise(self, duration_s: float | None = None) -> int:
        """Watch every node until a signal, `duration_s`, or a required node's final failure.

        Returns the launcher's exit code: 0 for a clean run, 1 when a required node failed.
        """
        until = None if duration_s is None else self.clock() + int(duration_s * 1e9)
        while not self.stopping and self.failure is None:
            now = self.clock()
            if until is not None and now >= until:
                self.stop_reason = "duration elapsed"
                break
            self._check_children(now)
            wait = 100.0 if until is None else max(0.0, min(100.0, (until - now) / 1e6))
            self._poll(wait)
        return 1 if self.failure else 0

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

    def _on_exit(self, child: _Child, code: int, now: int) -> None:
        spec = child.plan.spec
        label = child.plan.label
        policy = spec.restart
        window_ns = int(policy.window_s * 1e9)
        child.restarts = [t for t in child.restarts if now - t < window_ns]
        self.log.warning("node.exited", node=label, code=code)
        if len(child.restarts) < policy.max_restarts:
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
        self._report(
            DiagCode.NODE_RESTARTED,
            AuditId.NODE_FAILED,
            f"{label} exited with code {code}; {policy.max_restarts} restarts in "
            f"{policy.window_s} s used up",
            severity=Severity.CRITICAL,
        )
        if spec.required:
            self.failure = f"required node {label} failed permanently"

    def _report(
        self, code: DiagCode, audit: AuditId, message: str, *, severity: Severity = Severity.ERROR
    ) -> None:
        self.log.warning("launch.supervision", message=message)
        self.publisher.publish(
            Topic.DIAGNOSTIC,
            DiagnosticEvent(code=code, severity=severity, node="launcher", message=message[:512]),
        )
        self.publisher.publish(
            Topic.AUDIT, AuditEvent(event=audit, node="launcher", detail=message[:1024])
        )

    # -- stop ------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop nodes in reverse start order: SIGTERM, then SIGKILL after the grace period."""
        for child in reversed(self.children):
            child.restart_at = None
            popen = child.popen
            if popen is None or popen.poll() is not None:
                continue
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=child.plan.spec.stop_grace_ms / 1000)
            except subprocess.TimeoutExpired:
                self.log.warning("node.killed", node=child.plan.label)
                popen.kill()
                popen.wait()
            self.log.info("node.stopped", node=child.plan.label, code=popen.returncode)

    # -- graph -----------------------------------------------------------------------------

    def write_graph(self) -> None:
        """Write graph.json: nodes, pids, endpoints, topics and their types."""
        endpoints = {"pub": self.run.pub, "sub": self.run.sub, "control": self.run.control}
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
                    )
                    for c in self.children
                ],
            )
        )
