"""The watchdog's loop: watch heartbeats, timeouts and topics; probe; publish every transition."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq

from vigil.bus.deadline import Deadline
from vigil.bus.pubsub import Received, Subscriber
from vigil.bus.rundir import resolve_endpoint
from vigil.client import Client
from vigil.errors import RequestError
from vigil.nodes._runtime import Node
from vigil.nodes._scene import render_scene
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.watchdog._contract import KIND, WatchdogConfig
from vigil.nodes.watchdog._machine import MachineConfig, SafetyMachine, Transition
from vigil.nodes.watchdog._probe import compare_outputs, next_probe_ts_us
from vigil.schemas import (
    AuditId,
    DiagCode,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferResult,
    PerceptionOutput,
    SafetyState,
    Severity,
    StateChange,
    Topic,
)

__all__ = ["run"]

PROBE_STREAM = "vigil.health-probe"
PROBE_PRIORITY = 7  # the safety class: never shed by the degraded policy


@dataclass(slots=True)
class _Watched:
    """A heartbeat or topic that must arrive again within `timeout_ns`."""

    deadline: Deadline
    timeout_ns: int
    overdue: bool = False

    def heard(self, now: int) -> None:
        """It arrived: the next is due one timeout from now."""
        self.deadline = Deadline.after(self.timeout_ns, now)


class _Watchdog:
    def __init__(self, node: Node, config: WatchdogConfig) -> None:
        self.node = node
        self.config = config
        self.sub = node.subscriber(
            [
                Topic.HEARTBEAT,
                Topic.INFER_RESULT,
                Topic.INFER_ERROR,
                *[t for t in config.staleness_ms if t not in _CORE],
            ],
            skip_replayed=not config.accept_replay,
        )
        self.client: Client = node.enter(
            Client(
                resolve_endpoint(node.run, config.probe.endpoint),
                name=node.args.label,
                priority=PROBE_PRIORITY,
                ctx=node.ctx,
            )
        )
        node.poller.register(self.client.socket, zmq.POLLIN)
        self.frame = render_scene(config.probe.scene, config.probe.height, config.probe.width)
        self.expected = (
            _load_expected(node.resolve(config.probe.expected)) if (config.probe.expected) else None
        )
        self.machine: SafetyMachine | None = None
        self.nodes: dict[str, _Watched] = {}
        now = node.clock()
        for label in config.watch:
            self.nodes[label] = self._watch_entry(now, config.heartbeat_timeout_ms or 1000)
        self.topics = {t: self._watch_entry(now, ms) for t, ms in config.staleness_ms.items()}
        self.probe_seq = 0
        self.next_learn_ns = now
        # Failed requests seen, and how many of them the machine counted as inference
        # timeouts (only DEADLINE_EXCEEDED is one); shown in the heartbeat.
        self.errors_seen = 0
        self.timeouts_seen = 0

    def _watch_entry(self, now: int, timeout_ms: int) -> _Watched:
        timeout_ns = timeout_ms * 1_000_000
        return _Watched(Deadline.after(timeout_ns, now), timeout_ns)

    # -- start-up: resume from the latched state ----------------------------------------

    def resume(self) -> None:
        """Take over the last published state (a restarted watchdog must not reset it)."""
        state = SafetyState.NORMAL
        cause = "watchdog started"
        with Subscriber(
            self.node.ctx,
            self.node.run.sub,
            [Topic.SAFETY_STATE],
            skip_replayed=not self.config.accept_replay,
        ) as latched:
            deadline = Deadline.after(self.config.resume_wait_ms * 1_000_000, self.node.clock())
            while not self.node.stopping:
                left_ms = deadline.remaining_ns(self.node.clock()) / 1e6
                if left_ms <= 0:
                    break
                received = latched.recv(int(left_ms) + 1)
                if received is not None and isinstance(received.body, StateChange):
                    state = received.body.state
                    cause = f"watchdog resumed in {state}"
                    break
        now = self.node.clock()
        self.machine = SafetyMachine(
            MachineConfig(
                timeout_limit=self.config.timeout_limit,
                recovery_delay_ns=self.config.recovery_delay_ms * 1_000_000,
                max_recoveries=self.config.max_recoveries,
            ),
            now,
            state,
        )
        self._publish(Transition(state, state, cause, now))

    # -- events --------------------------------------------------------------------------

    def on_bus(self) -> None:
        assert self.machine is not None
        while (received := self.sub.recv(0)) is not None:
            self._on_message(received)

    def _on_message(self, received: Received) -> None:
        assert self.machine is not None
        now = self.node.clock()
        topic = self.topics.get(received.topic)
        if topic is not None:
            topic.heard(now)
            topic.overdue = False
        body = received.body
        if isinstance(body, Heartbeat):
            self._on_heartbeat(body, now)
        elif isinstance(body, InferResult):
            self.machine.inference_ok()
        elif isinstance(body, ErrorReply):
            self.errors_seen += 1
            if body.code is ErrorCode.DEADLINE_EXCEEDED:
                self.timeouts_seen += 1
                self._apply(self.machine.inference_timeout(now))
            self._show()

    def _on_heartbeat(self, beat: Heartbeat, now: int) -> None:
        if beat.detail.get("lifecycle") == "stopping":
            if self.nodes.pop(beat.node, None) is not None:  # a clean stop is not a fault
                self._show()
            return
        timeout_ms = (
            self.config.deadlines_ms.get(beat.node)
            or self.config.deadlines_ms.get(beat.node.split(".")[0])
            or self.config.heartbeat_timeout_ms
            or beat.period_ms * 5 // 2
        )
        watched = self.nodes.get(beat.node)
        if watched is None:
            self.nodes[beat.node] = self._watch_entry(now, timeout_ms)
            self._show()
            return
        watched.timeout_ns = timeout_ms * 1_000_000
        watched.heard(now)
        if watched.overdue:
            watched.overdue = False
            self.node.record("info", "watchdog.heartbeat_back", node=beat.node)

    def check(self) -> None:
        """Overdue heartbeats and stale topics are faults; then let the timer run."""
        assert self.machine is not None
        now = self.node.clock()
        for label, watched in self.nodes.items():
            # Overdue once past its deadline, not at it.
            if not watched.overdue and watched.deadline.remaining_ns(now) < 0:
                watched.overdue = True
                self.node.diag(
                    DiagCode.HEARTBEAT_MISSING,
                    f"heartbeat of {label} overdue",
                    severity=Severity.ERROR,
                )
                self._apply(self.machine.fault(f"heartbeat missing: {label}", now))
        for name, topic in self.topics.items():
            if not topic.overdue and topic.deadline.remaining_ns(now) < 0:
                topic.overdue = True
                self.node.diag(DiagCode.TOPIC_STALE, f"topic {name} stale", severity=Severity.ERROR)
                self._apply(self.machine.fault(f"topic stale: {name}", now))
        active = any(w.overdue for w in self.nodes.values()) or any(
            t.overdue for t in self.topics.values()
        )
        transition = self.machine.tick(now, faults_active=active)
        self._apply(transition)
        if transition is not None and transition.state is SafetyState.RECOVERING:
            self._send_probe()
        if (
            self.expected is None
            and self.probe_seq == 0
            and self.machine.state is SafetyState.NORMAL
            and now >= self.next_learn_ns
        ):
            self.next_learn_ns = now + self.config.probe.learn_interval_ms * 1_000_000
            self._send_probe()

    # -- probe ---------------------------------------------------------------------------

    def _send_probe(self) -> None:
        self.probe_seq = self.client.submit(
            self.frame,
            stream_id=PROBE_STREAM,
            frame_ts_us=next_probe_ts_us(),
            deadline_s=self.config.probe.timeout_ms / 1000,
        )

    def on_probe(self) -> None:
        """A probe came back: learn the known answer, or judge the recovery by it."""
        assert self.machine is not None
        reply = self.client.poll(0)
        if reply is None:
            return
        seq, outcome = reply
        if seq != self.probe_seq:
            return
        self.probe_seq = 0
        now = self.node.clock()
        if isinstance(outcome, RequestError):
            if self.machine.state is SafetyState.RECOVERING:
                self._apply(self.machine.probe_result(False, str(outcome.reply.code), now))
            return
        if self.expected is None and self.machine.state is SafetyState.RECOVERING:
            # A known answer is only ever learned while NORMAL; until then a recovery can only
            # be judged by a result coming back through the whole pipeline.
            self._apply(
                self.machine.probe_result(True, "result returned (no known answer yet)", now)
            )
            return
        if self.expected is None:
            self.expected = outcome.output
            self.node.record(
                "info",
                "watchdog.known_answer_learned",
                boxes=len(outcome.output.boxes),
                model=outcome.model,
                version=outcome.version,
            )
            return
        verdict = compare_outputs(
            self.expected,
            outcome.output,
            min_iou=self.config.probe.min_iou,
            score_tol=self.config.probe.score_tol,
        )
        self._apply(self.machine.probe_result(verdict.passed, verdict.detail, now))

    def poll_timeout_ms(self) -> float:
        if self.client.in_flight:
            return 20.0
        return 50.0

    # -- output --------------------------------------------------------------------------

    def _apply(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self._publish(transition)
        if transition.state is SafetyState.RECOVERING:
            return
        if transition.state is SafetyState.DEGRADED and self.machine is not None:
            self.probe_seq = 0

    # implements: SR-WDG-003
    def _publish(self, t: Transition) -> None:
        assert self.machine is not None
        self.node.publisher.publish(
            Topic.SAFETY_STATE,
            StateChange(
                state=t.state,
                previous=t.previous,
                cause=t.cause[:256],
                since_ns=t.at_ns,
                transitions=self.machine.transitions,
            ),
        )
        self.node.audit(AuditId.STATE_TRANSITION, f"{t.previous} -> {t.state}: {t.cause}")
        self.node.record(
            "warning" if t.state is not SafetyState.NORMAL else "info",
            "watchdog.transition",
            previous=t.previous.value,
            state=t.state.value,
            cause=t.cause,
        )
        self._show()

    def _show(self) -> None:
        """Put the state and the error tallies into the heartbeat (read by its thread)."""
        assert self.machine is not None
        self.node.heartbeat_detail = {
            "state": self.machine.state.value,
            "errors_seen": str(self.errors_seen),
            "timeouts_seen": str(self.timeouts_seen),
            # The nodes whose heartbeats it expects: what a missing beat would degrade.
            "watching": ",".join(sorted(self.nodes)),
        }


_CORE = {Topic.HEARTBEAT, Topic.INFER_RESULT, Topic.INFER_ERROR}


def _load_expected(path: Path) -> PerceptionOutput:
    return msgspec.json.decode(path.read_bytes(), type=PerceptionOutput)


def run(config: WatchdogConfig, args: NodeArgs) -> ExitCode:
    """Run the safety state machine until SIGTERM/SIGINT."""
    with Node(args) as node:
        watchdog = _Watchdog(node, config)
        node.ready(KIND.contract(config))
        watchdog.resume()
        while not node.stopping:
            events = node.poll(watchdog.poll_timeout_ms())
            if events.get(watchdog.sub.socket):
                watchdog.on_bus()
            if events.get(watchdog.client.socket) or watchdog.client.in_flight:
                watchdog.on_probe()
            watchdog.check()
        assert watchdog.machine is not None
        node.log.info("node.stopping", reason=node.stop_reason, state=watchdog.machine.state)
    return ExitCode.OK
