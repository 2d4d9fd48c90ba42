"""The launcher: start the proxy and every node, wait until each is ready, supervise, stop."""

from __future__ import annotations

import grp
import hashlib
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import msgspec
import structlog
import zmq

from vigil.bus.clock import to_next_tick
from vigil.bus.deadline import Deadline
from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import GraphNode, RunDir, RunDirInUse, RunGraph
from vigil.bus.signals import SignalWakeup
from vigil.errors import VigilError
from vigil.launch._beats import Beats
from vigil.launch._privileges import NodeUser, PrivilegeError, child_setup, node_user
from vigil.launch.model import LaunchPlan, PlannedProcess
from vigil.nodes._logging import log_stream
from vigil.nodes._preload import environ
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.kinds import node_kind
from vigil.schemas import (
    TOPICS,
    AuditEvent,
    AuditId,
    DiagCode,
    DiagnosticEvent,
    Heartbeat,
    Message,
    NodeExit,
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
# A closed terminal (SIGHUP) stops the launch in order, as Ctrl-C does.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Nodes whose launcher is gone stop this far apart, the last started first.
_ORPHAN_STOP_STEP_MS = 200
# How late a turn of the supervision loop may come before the delay is forgiven to everyone.
_LATE_TURN_NS = 20_000_000
_GRAPH_RETRY_NS = 1_000_000_000
# How long the launcher waits to see its SAFE_STOP come back through the proxy (so the
# logger, subscribed to the same proxy, has it) before it stops the nodes.
_SAFE_STOP_ECHO_S = 2.0
_BEATS_BEFORE_RELEASE = 3
_RESEND_NS = 2_000_000_000
_RESEND_PERIOD_NS = 200_000_000
_IDLE_WAIT_NS = 1_000_000_000


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
    # Why the launcher itself ended the process ("" when it ended on its own).
    kill_reason: str = ""


# implements: SR-SUP-007
class _OutputWatch:
    """Notices when the reader of the launcher's output goes away (a pipe closed: the `tee`
    a Ctrl-C ended, a closed ssh session), so the launch stops in order instead of dying
    on its next write."""

    def __init__(self) -> None:
        self.fd: int | None = None
        try:
            fd = sys.stdout.fileno()
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                self.fd = fd
        except (OSError, ValueError):  # no real stdout (a test's capture)
            self.fd = None
        self.closed = False

    def register(self, poller: zmq.Poller) -> None:
        """Watch the pipe for its reader's end (POLLERR on the write end)."""
        if self.fd is not None and not self.closed:
            poller.register(self.fd, zmq.POLLERR)

    def handle(self, events: dict[Any, int]) -> None:
        """Take the pipe out of a poll's `events`; note when it broke."""
        if self.fd is not None and events.pop(self.fd, 0):
            self.closed = True
        stream = log_stream()
        if stream is not None and stream.broken:
            self.closed = True


class _LauncherBeat(threading.Thread):
    """The launcher's heartbeat, from its own thread and socket (as a node's): a launcher
    that is stopped or killed falls silent, one busy starting a node or stopping one does not.
    """

    def __init__(self, launcher: Launcher) -> None:
        super().__init__(name="heartbeat-launcher", daemon=True)
        self._ctx = launcher.ctx
        self._endpoint = launcher.pub_endpoint
        self._curve = launcher.plan.curve
        self._period_ms = launcher.plan.launch.heartbeat_ms
        self._stop_event = threading.Event()

    def run(self) -> None:
        with Publisher(self._ctx, self._endpoint, source="launcher", curve=self._curve) as pub:
            while True:
                stopping = self._stop_event.is_set()
                pub.publish(
                    Topic.HEARTBEAT,
                    Heartbeat(
                        node="launcher",
                        instance=0,
                        pid=os.getpid(),
                        period_ms=self._period_ms,
                        kind="launcher",
                        detail={"lifecycle": "stopping"} if stopping else {},
                    ),
                )
                if stopping:
                    # The last beat says the launcher stops on purpose: let it leave.
                    pub.socket.setsockopt(zmq.LINGER, 200)
                    return
                self._stop_event.wait(to_next_tick(self._period_ms / 1000))

    def stop(self) -> None:
        """Send the last beat, saying the launcher stops on purpose, and end the thread."""
        if self.is_alive():
            self._stop_event.set()
            self.join()


class Launcher:
    """Owns every node process of one run and the run directory's graph.

    Use as a context manager: leaving it stops every node in reverse start order (SIGINT,
    then SIGTERM and SIGKILL after each node's grace periods), whatever happened inside. The
    run directory is locked for as long: a second launch on it is refused (LaunchError).

    Besides exits (seen at once through SIGCHLD, and published as `NodeExit`), it watches
    every child's heartbeat: a child silent for its `restart.hang_beats` periods while its
    process lives is hung, and killed to be restarted. It beats itself, so the watchdog
    supervises it in turn; when the watchdog falls silent, the launcher degrades the state
    in its place. Nodes learn of the launcher's death through a pidfd and stop in order.
    `clock_offset_file` (fault injection) lets a test step every node's wall clock.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        run: RunDir,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        python: str = sys.executable,
        clock_offset_file: Path | None = None,
    ) -> None:
        self.plan = plan
        self.run = run
        self.clock = clock
        self.python = python
        self.log = structlog.get_logger(node="launcher")
        self._stack = ExitStack()
        try:
            self._stack.enter_context(run.lock())
        except RunDirInUse as exc:
            raise LaunchError(str(exc)) from exc
        except OSError as exc:
            raise LaunchError(f"run directory {run.path}: {exc.strerror}") from exc
        self.ctx: zmq.Context[zmq.Socket[bytes]] = self._stack.enter_context(zmq.Context())
        self.control: zmq.Socket[bytes] = self._stack.enter_context(self.ctx.socket(zmq.PULL))
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(run.control)
        try:
            (run.path / "logs").mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            self._stack.close()
            raise LaunchError(f"run directory {run.path}: {exc.strerror}") from exc
        self.pub_endpoint = plan.pub or run.pub
        self.sub_endpoint = plan.sub or run.sub
        self.publisher = self._stack.enter_context(
            Publisher(self.ctx, self.pub_endpoint, source="launcher", curve=plan.curve)
        )
        # The launcher listens to the safety state (to name the state it leaves on SAFE_STOP)
        # and to heartbeats (to find hung children, and to know when the bus carries messages
        # again after a proxy restart).
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
        ordered = [*planned, *plan.processes]
        offset = str(clock_offset_file) if clock_offset_file is not None else ""
        self.children = [
            _Child(_supervised(p, len(ordered) - 1 - i, offset)) for i, p in enumerate(ordered)
        ]
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
        self._held: list[tuple[str, Message]] = []
        self._resend: list[tuple[int, list[Any]]] = []
        self._next_resend = 0
        self._beats_since_proxy: dict[str, int] = {}
        self._ended = ""
        self.failure: str | None = None
        # SIGCHLD only wakes the loop, which then reaps and restarts children.
        self._signals = SignalWakeup((*_STOP_SIGNALS, signal.SIGCHLD))
        self._stack.callback(self._signals.close)
        self._output = _OutputWatch()
        proxy = self._proxy_child()
        self.beats = Beats(proxy.plan.label if proxy is not None else None, clock())
        self._bus_read_ns = clock()
        # Whether the bus starts empty (see `NodeArgs.fresh_bus`): this launch's own proxy,
        # no other host's launch publishing on it, and no latched values kept in the run
        # directory by an earlier launch.
        kept = run.latched.is_dir() and any(run.latched.iterdir())
        self._fresh_bus = plan.proxy is not None and not plan.launch.hosts and not kept
        self._kinds_run: set[str] = set()  # kinds of which a process has been started
        # What supervision saw and when (monotonic ns, node, what): for benches and tests.
        self.events: list[tuple[int, str, str]] = []
        self._heartbeat = _LauncherBeat(self)
        self._wake_due = clock()
        self._graph_retry: int | None = None
        self.started_ns = time.time_ns()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._signals.install()
        self._heartbeat.start()
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
            self._heartbeat.stop()
            self._stack.close()

    @property
    def stopping(self) -> bool:
        """Whether SIGTERM, SIGINT or SIGHUP arrived, or the output's reader went away:
        supervision ends and every node is stopped in order."""
        return self._signals.first(_STOP_SIGNALS) is not None or self._output.closed

    @property
    def stop_reason(self) -> str:
        """The stop signal that arrived first, or why supervision ended without one."""
        first = self._signals.first(_STOP_SIGNALS)
        if first is not None:
            return first.name
        return "output closed" if self._output.closed else self._ended

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the proxy, then every node in file order, each ready before the next.

        The run directory must take a write first: on a full disk the launch ends with one
        line saying so, before any node starts.
        """
        try:
            self.run.write_graph(self._graph())
        except OSError as exc:
            raise LaunchError(f"run directory {self.run.path}: {exc.strerror}") from exc
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
        if self._fresh_bus and args.kind not in self._kinds_run:
            args = msgspec.structs.replace(args, fresh_bus=True)
        self._kinds_run.add(args.kind)
        child.ready = False
        try:
            child.popen = self._popen(child, args, shared)
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"cannot start {args.label}: {exc}") from exc
        child.pid = child.popen.pid
        self.events.append((self.clock(), args.label, "spawn"))
        self.log.info("node.started", node=args.label, pid=child.pid)

    def _popen(self, child: _Child, args: NodeArgs, shared: bool) -> subprocess.Popen[bytes]:
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
            env=environ(node_kind(args.kind).preload, os.environ),
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
        now = self.clock()
        # Time since the last turn that the caller kept the launcher from running.
        self.beats.forgive(now - self._wake_due - _LATE_TURN_NS)
        wait = timeout_ms
        for due in (self.beats.next_due_ns(), self._bus_read_due()):
            if due is not None:
                wait = min(wait, (due - now) / 1e6)
        wait = max(0.0, wait)
        self._wake_due = now + int(wait * 1e6)
        # The bus is not polled: heartbeats arrive many times a second and each wake-up
        # costs more than reading them all at once on a timer (`_bus_read_due`).
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        self._signals.register(poller)
        self._output.register(poller)
        events = dict(poller.poll(math.ceil(wait)))
        woke = self._signals.handle(events)
        self._output.handle(events)
        if woke:  # a child exited (SIGCHLD): seen now, not at the next turn
            self._check_children(self.clock())
        if events.get(self.control):
            while True:
                try:
                    raw = self.control.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_ready(msgspec.msgpack.decode(raw, type=NodeReady))
        self._on_bus()
        self._check_beats(self.clock())

    def _bus_read_due(self) -> int | None:
        """When the bus is next read: every half period of the children watched, and while
        held reports wait for the restarted proxy's beats."""
        every = self.beats.read_every_ns()
        if every is None and self._held:
            every = self.plan.launch.heartbeat_ms * 1_000_000 // 2
        return None if every is None else self._bus_read_ns + every

    def _on_bus(self) -> None:
        """Read what the bus brought since the last read (beats arrived after it)."""
        now = self.clock()
        since, self._bus_read_ns = self._bus_read_ns, now
        for _ in range(1024):
            received = self.bus.recv(0)
            if received is None:
                if not self.bus.socket.poll(0):
                    return
                continue
            body = received.body
            if isinstance(body, StateChange):
                self.state = body
            elif isinstance(body, Heartbeat):
                if self.beats.beat(body.node, body.pid, now, since_ns=since):
                    self.log.info("node.heartbeat_back", node=body.node)
                if self._held:
                    self._beats_since_proxy[body.node] = (
                        self._beats_since_proxy.get(body.node, 0) + 1
                    )
                    self._release_held()

    def _check_beats(self, now: int) -> None:
        """Kill children that are hung; stand in for a silent watchdog."""
        # Time this loop did not run (the launcher stopped, the host busy) is nobody's fault.
        self.beats.forgive(now - self._wake_due - _LATE_TURN_NS)
        self._wake_due = now
        for silence in self.beats.check(now):
            child = self._child(silence.label)
            if child is None or child.popen is None or child.popen.poll() is not None:
                continue
            silent_ms = silence.silent_ns // 1_000_000
            if silence.hung:
                self._kill_hung(child, silent_ms, now)
            else:
                self.events.append((now, silence.label, "silent"))
                if child.plan.spec.kind == "watchdog":
                    self._watchdog_silent(child, silent_ms)

    # implements: SR-SUP-001, SR-SUP-004
    def _kill_hung(self, child: _Child, silent_ms: int, now: int) -> None:
        """A child alive but silent for its hang limit: kill it; its exit restarts it."""
        assert child.popen is not None
        label = child.plan.label
        child.kill_reason = f"hung: no heartbeat for {silent_ms} ms"
        self.events.append((now, label, "hung"))
        self.beats.gone(label)
        self._report(
            DiagCode.NODE_HUNG,
            AuditId.NODE_FAILED,
            f"{label} (pid {child.pid}) silent for {silent_ms} ms while alive: killed",
        )
        child.popen.kill()

    # implements: SR-SUP-006
    def _watchdog_silent(self, child: _Child, silent_ms: int) -> None:
        """The watchdog itself fell silent: nobody watches the nodes now, so the launcher
        degrades the state in its place (the restarted watchdog resumes from it)."""
        label = child.plan.label
        message = f"watchdog {label} silent for {silent_ms} ms: nothing watches the nodes"
        self._report(
            DiagCode.HEARTBEAT_MISSING, AuditId.STATE_TRANSITION, message, severity=Severity.ERROR
        )
        previous = self.state.state if self.state is not None else SafetyState.NORMAL
        if previous in (SafetyState.NORMAL, SafetyState.RECOVERING):
            self._publish(
                Topic.SAFETY_STATE,
                StateChange(
                    state=SafetyState.DEGRADED,
                    previous=previous,
                    cause=f"heartbeat missing: {label}",
                    since_ns=time.time_ns(),
                    transitions=(self.state.transitions + 1) if self.state is not None else 1,
                    capacity=self.state.capacity if self.state is not None else 1.0,
                ),
            )

    def _child(self, label: str) -> _Child | None:
        return next((c for c in self.children if c.plan.label == label), None)

    def _on_ready(self, report: NodeReady) -> None:
        for child in self.children:
            args = child.plan.args
            if args.name == report.name and args.instance == report.instance:
                child.ready = True
                child.endpoints = report.endpoints
                child.publishes = report.publishes
                child.subscribes = report.subscribes
                child.kill_reason = ""
                self.beats.started(
                    args.label,
                    report.pid,
                    args.heartbeat_ms,
                    child.plan.spec.restart.hang_beats,
                    self.clock(),
                )
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
        for topic, body in held:
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
            if self._graph_retry is not None and now >= self._graph_retry:
                self.write_graph()
            self._poll(self._wait_ms(now, until))
        if self.failure is not None and not self.safe_stopped:
            self._safe_stop(self.failure)
        return 1 if self.failure else 0

    def _wait_ms(self, now: int, until: Deadline | None) -> float:
        """Until the next timer: a restart's back-off, a resend, the run's end; else up to a
        second (`_poll` shortens it to the next read of the bus). A child's exit (SIGCHLD), a
        signal or a control message wakes the loop at once; heartbeats do not, so an idle
        launcher costs nothing per request and a few wake-ups a second."""
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        if self._resend:
            due.append(self._next_resend)
        if self._graph_retry is not None:
            due.append(self._graph_retry)
        wait_ns = min((t - now for t in due), default=_IDLE_WAIT_NS)
        if until is not None:
            wait_ns = min(wait_ns, until.remaining_ns(now))
        return max(0.0, min(wait_ns, _IDLE_WAIT_NS) / 1e6)

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
        self.beats.gone(label)
        self.events.append((now, label, "exit"))
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
            self._exited(child, code, backoff_ms)
            self._report(
                DiagCode.NODE_RESTARTED,
                AuditId.NODE_RESTARTED,
                f"{label} exited with code {code}; restart {len(child.restarts)} "
                f"in {backoff_ms} ms",
            )
            return
        child.failed = True
        self._exited(child, code, -1)
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

    # implements: SR-SUP-005
    def _exited(self, child: _Child, code: int, restart_in_ms: int) -> None:
        """Tell the bus at once that a child's process ended (the watchdog then need not
        wait for its heartbeat to be overdue)."""
        self._publish(
            Topic.NODE_EXIT,
            NodeExit(
                node=child.plan.label,
                kind=child.plan.spec.kind,
                pid=child.pid,
                code=code,
                reason=child.kill_reason[:256],
                restart_in_ms=restart_in_ms,
            ),
        )

    def _report(
        self,
        code: DiagCode,
        audit: AuditId | None,
        message: str,
        *,
        severity: Severity = Severity.ERROR,
    ) -> None:
        self.log.warning("launch.supervision", message=message)
        diag = DiagnosticEvent(code=code, severity=severity, node="launcher", message=message[:512])
        self._publish(Topic.DIAGNOSTIC, diag)
        if audit is not None:
            event = AuditEvent(event=audit, node="launcher", detail=message[:1024])
            self._publish(Topic.AUDIT, event)

    def _publish(self, topic: str, body: Message) -> None:
        """Publish now, or hold it while the proxy is down (a PUB would drop it)."""
        proxy = self._proxy_child()
        if self._held or (proxy is not None and not proxy.ready):
            self._held.append((topic, body))
            return
        self.publisher.publish(topic, body)

    # -- stop ------------------------------------------------------------------------------

    # implements: SR-SUP-007
    def stop_all(self) -> None:
        """Stop nodes in reverse start order, each down the ladder of `stop`.

        Why the launch stops is published first (the logger, among the last to stop, seals
        it), with a last heartbeat saying the launcher stops on purpose.
        """
        if any(c.popen is not None and c.popen.poll() is None for c in self.children):
            reason = self.failure or self.stop_reason or "launch ended"
            self.log.info("launch.stopping", reason=reason)
            self._heartbeat.stop()
            self._publish(
                Topic.AUDIT,
                AuditEvent(
                    event=AuditId.NODE_STOPPED,
                    node="launcher",
                    detail=f"launch stopping in order: {reason}"[:1024],
                ),
            )
        for child in reversed(self.children):
            self.beats.gone(child.plan.label)
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

    # implements: SR-DSK-001
    def write_graph(self) -> None:
        """Write graph.json: nodes, pids, endpoints, topics and their types.

        A full disk does not stop supervision: the graph stays in memory, the failure is
        reported once, and the write is tried again every second until it succeeds.
        """
        try:
            self.run.write_graph(self._graph())
        except OSError as exc:
            if self._graph_retry is None:
                self._report(
                    DiagCode.DISK_FULL,
                    None,
                    f"graph.json not written ({exc.strerror}); kept in memory, retried",
                )
            self._graph_retry = self.clock() + _GRAPH_RETRY_NS
            return
        if self._graph_retry is not None:
            self._graph_retry = None
            self._report(
                DiagCode.DISK_FULL, None, "graph.json written again", severity=Severity.INFO
            )

    def _graph(self) -> RunGraph:
        endpoints = {
            "pub": self.pub_endpoint,
            "sub": self.sub_endpoint,
            "control": self.run.control,
        }
        for child in self.children:
            for key, value in child.endpoints.items():
                endpoints.setdefault(f"{child.plan.label}.{key}", value)
        return RunGraph(
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


def _supervised(process: PlannedProcess, stop_rank: int, clock_offset_file: str) -> PlannedProcess:
    """`process` told who supervises it (this launcher's pid), when to stop if that one dies
    (`stop_rank` steps after, the last started first) and which wall clock to read."""
    args = msgspec.structs.replace(
        process.args,
        supervisor_pid=os.getpid(),
        stop_after_ms=stop_rank * _ORPHAN_STOP_STEP_MS,
        clock_offset_file=clock_offset_file,
    )
    return msgspec.structs.replace(process, args=args)
