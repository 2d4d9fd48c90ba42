"""The watchdog's loop: watch heartbeats, exits, timeouts and topics; probe; publish every state."""

from __future__ import annotations

from pathlib import Path

import msgspec

from vigil.bus.pubsub import Received, Subscriber
from vigil.bus.rundir import resolve_endpoint
from vigil.client import Client
from vigil.errors import RequestError
from vigil.nodes._runtime import Node
from vigil.nodes._scene import render_scene
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.watchdog._contract import KIND, WatchdogConfig, probe_endpoints
from vigil.nodes.watchdog._liveness import TOPIC_KIND, Liveness, Watched
from vigil.nodes.watchdog._machine import MachineConfig, SafetyMachine, Transition
from vigil.nodes.watchdog._probe import compare_outputs, next_probe_ts_us
from vigil.schemas import (
    AuditId,
    DiagCode,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferResult,
    ModelAnnouncement,
    NodeExit,
    PerceptionOutput,
    SafetyState,
    Severity,
    StateChange,
    Topic,
)

__all__ = ["run"]

PROBE_STREAM = "vigil.health-probe"
PROBE_PRIORITY = 7  # the safety class: never shed by the degraded policy
# The loop turns at least this often; a turn that comes much later than asked means the
# watchdog itself did not run (stopped, or starved by the host), not that others are late.
_TURN_MS = 50.0
_LATE_TURN_NS = 20_000_000


class _Watchdog:
    def __init__(self, node: Node, config: WatchdogConfig) -> None:
        self.node = node
        self.config = config
        self.sub = node.subscriber(
            [
                Topic.HEARTBEAT,
                Topic.NODE_EXIT,
                Topic.INFER_RESULT,
                Topic.INFER_ERROR,
                Topic.MODEL_ACTIVE,
                *[t for t in config.staleness_ms if t not in _CORE],
            ],
            skip_replayed=not config.accept_replay,
        )
        self.client: Client = node.enter(
            Client(
                [resolve_endpoint(node.run, e) for e in probe_endpoints(config)],
                name=node.args.label,
                priority=PROBE_PRIORITY,
                ctx=node.ctx,
            )
        )
        self.client.register(node.poller)
        self.frame = render_scene(config.probe.scene, config.probe.height, config.probe.width)
        self.configured = (
            _load_expected(node.resolve(config.probe.expected)) if config.probe.expected else None
        )
        # Known answers learned per model version: a swap brings a new answer, not a fault.
        self.learned: dict[tuple[str, str], PerceptionOutput] = {}
        self.active: tuple[str, str] | None = None
        self.machine: SafetyMachine | None = None
        now = node.clock()
        self.liveness = Liveness(node.args.label, (config.heartbeat_timeout_ms or 1000) * 1_000_000)
        self.liveness.expect(config.watch, now)
        for topic, ms in config.staleness_ms.items():
            self.liveness.watch_topic(topic, ms * 1_000_000, now)
        self.probe_seq = 0
        self.next_learn_ns = now
        self.capacity = 1.0
        self.flapping = False
        self.bus_returns = 0
        self.turn_due_ns = now
        # Failed requests seen, and how many of them the machine counted as inference
        # timeouts (only DEADLINE_EXCEEDED is one); shown in the heartbeat.
        self.errors_seen = 0
        self.timeouts_seen = 0
        self.watching = 0
        self.rate = 0
        self.reprobe_ns: int | None = None  # when to probe again after an inconclusive one

    # -- start-up: resume from the latched state ----------------------------------------

    def resume(self) -> None:
        """Take over the last published state (a restarted watchdog must not reset it)."""
        state = SafetyState.NORMAL
        cause = "watchdog started"
        with Subscriber(
            self.node.ctx,
            self.node.sub_endpoint,
            [Topic.SAFETY_STATE],
            skip_replayed=not self.config.accept_replay,
        ) as latched:
            deadline = self.node.clock() + self.config.resume_wait_ms * 1_000_000
            while not self.node.stopping:
                left_ms = (deadline - self.node.clock()) / 1e6
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
                min_dwell_ns=self.config.min_dwell_ms * 1_000_000,
                flap_limit=self.config.flap_limit,
                max_recovery_delay_ns=self.config.max_recovery_delay_ms * 1_000_000,
            ),
            now,
            state,
        )
        self.turn_due_ns = now
        self._publish(Transition(state, state, cause, now))

    # -- events --------------------------------------------------------------------------

    def on_bus(self) -> None:
        while (received := self.sub.recv(0)) is not None:
            self._on_message(received)

    def _on_message(self, received: Received) -> None:
        assert self.machine is not None
        now = self.node.clock()
        if self.liveness.heard(received.topic, now):
            self.node.record("info", "watchdog.topic_back", topic=received.topic)
        body = received.body
        if isinstance(body, Heartbeat):
            self._on_heartbeat(body, now)
        elif isinstance(body, NodeExit):
            self._on_exit(body, now)
        elif isinstance(body, InferResult):
            self.machine.inference_ok()
        elif isinstance(body, ErrorReply):
            self.errors_seen += 1
            if _system_miss(body):
                self.timeouts_seen += 1
                self._apply(self.machine.inference_timeout(now))
            self._show()
        elif isinstance(body, ModelAnnouncement):
            self.active = (body.name, body.version)

    def _on_heartbeat(self, beat: Heartbeat, now: int) -> None:
        if beat.detail.get("lifecycle") == "stopping":
            self.liveness.stopped(beat.node)  # a clean stop is not a fault
            if len(self.liveness.entries) != self.watching:
                self._show()
            return
        timeout_ms = (
            self.config.deadlines_ms.get(beat.node)
            or self.config.deadlines_ms.get(beat.node.split(".")[0])
            or self.config.heartbeat_timeout_ms
            or beat.period_ms * 5 // 2
        )
        if self.liveness.beat(beat.node, beat.kind, beat.pid, timeout_ms * 1_000_000, now):
            self.node.record("info", "watchdog.heartbeat_back", node=beat.node)
        if len(self.liveness.entries) != self.watching:
            self._show()

    # implements: SR-WDG-001
    def _on_exit(self, exit_: NodeExit, now: int) -> None:
        """The launcher saw a process end: a fault at once, not heartbeats later."""
        entry = self.liveness.exited(exit_.node, exit_.pid, exit_.code)
        if entry is not None:
            self._fault(entry, now)

    def _fault(self, entry: Watched, now: int) -> None:
        assert self.machine is not None
        stale = entry.why == "stale"
        self.node.diag(
            DiagCode.TOPIC_STALE if stale else DiagCode.HEARTBEAT_MISSING,
            f"topic {entry.name} stale" if stale else f"{entry.name} {entry.why}",
            severity=Severity.ERROR,
        )
        what = "topic stale" if stale else f"{entry.why.split(' (')[0]}"
        self._apply(self.machine.fault(f"{what}: {entry.name}", now))

    def check(self) -> None:
        """Overdue heartbeats and stale topics are faults; then let the timer run."""
        assert self.machine is not None
        now = self.node.clock()
        # Time this loop did not run cannot be held against the nodes it watches.
        self.liveness.forgive(now - self.turn_due_ns - _LATE_TURN_NS)
        for entry in self.liveness.overdue(now):
            self._fault(entry, now)
        transition = self.machine.tick(now, faults_active=self.liveness.active)
        self._apply(transition)
        if transition is not None and transition.state is SafetyState.RECOVERING:
            self._send_probe()
        elif (
            self.machine.state is SafetyState.RECOVERING
            and self.probe_seq == 0
            and self.reprobe_ns is not None
            and now >= self.reprobe_ns
        ):
            self.reprobe_ns = None
            self._send_probe()
        self._follow_capacity(now)
        if self.liveness.bus_returns != self.bus_returns:
            # What was published while the bus was down is lost: say the state again.
            self.bus_returns = self.liveness.bus_returns
            state = self.machine.state
            self._publish(Transition(state, state, "bus back: state repeated", now), audited=False)
        if self._learning() and self.probe_seq == 0 and now >= self.next_learn_ns:
            self.next_learn_ns = now + self.config.probe.learn_interval_ms * 1_000_000
            self._send_probe()

    def _follow_capacity(self, now: int) -> None:
        """Publish the state again when the capacity behind it changed (the policy sheds by
        it), and say once when the state starts flapping."""
        assert self.machine is not None
        flapping = self.machine.flapping(now)
        if flapping and not self.flapping:
            self.node.diag(
                DiagCode.STATE_FLAPPING,
                f"{self.machine.transitions_per_min(now)} transitions in the last minute;"
                f" recovery delay now {self.machine.recovery_delay_ns(now) // 1_000_000} ms",
                severity=Severity.WARNING,
            )
        self.flapping = flapping
        capacity = self._capacity()
        if capacity == self.capacity:
            return
        state = self.machine.state
        self._publish(Transition(state, state, f"capacity {capacity:.2f}", now), audited=False)

    def _capacity(self) -> float:
        assert self.machine is not None
        if self.machine.state is SafetyState.NORMAL:
            return 1.0
        return round(self.liveness.capacity(), 3)

    # -- probe ---------------------------------------------------------------------------

    def _learning(self) -> bool:
        """Whether a known answer is still to be learned (no configured one, none for the
        serving version yet) while NORMAL."""
        assert self.machine is not None
        if self.configured is not None or self.machine.state is not SafetyState.NORMAL:
            return False
        if self.active is None:
            return not self.learned
        return self.active not in self.learned

    def _send_probe(self) -> None:
        try:
            self.probe_seq = self.client.submit(
                self.frame,
                stream_id=PROBE_STREAM,
                frame_ts_us=next_probe_ts_us(),
                deadline_s=self.config.probe.timeout_ms / 1000,
            )
        except RequestError as exc:  # no ingest takes it now: judged like any failed probe
            self._judge_error(exc)

    def on_probe(self) -> None:
        """A probe came back: learn the known answer, or judge the recovery by it."""
        while (reply := self.client.poll(0)) is not None:
            seq, outcome = reply
            if seq != self.probe_seq:
                continue
            self.probe_seq = 0
            if isinstance(outcome, RequestError):
                self._judge_error(outcome)
            else:
                self._judge(outcome)

    def _judge_error(self, error: RequestError) -> None:
        """A probe that ended in an error. One that only ran out of time or was refused for
        load says nothing about the pipeline's health (a busy host is not a fault): it is
        sent again after the recovery delay, and the recovery does not count as failed."""
        assert self.machine is not None
        if self.machine.state is not SafetyState.RECOVERING:
            return
        now = self.node.clock()
        if error.reply.code in _INCONCLUSIVE:
            self.reprobe_ns = now + self.machine.recovery_delay_ns(now)
            self.node.record("warning", "watchdog.probe_inconclusive", code=str(error.reply.code))
            return
        self._apply(self.machine.probe_result(False, str(error.reply.code), now))

    def _judge(self, result: InferResult) -> None:
        assert self.machine is not None
        now = self.node.clock()
        version = (result.model, result.version)
        expected = self.configured or self.learned.get(version)
        if expected is None:
            if self.machine.state is SafetyState.RECOVERING:
                # Known answers are learned only while NORMAL; until one exists for this
                # version, a recovery is judged by a result coming back through the pipeline.
                self._apply(
                    self.machine.probe_result(
                        True, f"result returned (no known answer yet for {version[1]})", now
                    )
                )
            elif self.machine.state is SafetyState.NORMAL:
                self.learned[version] = result.output
                self.node.record(
                    "info",
                    "watchdog.known_answer_learned",
                    boxes=len(result.output.boxes),
                    model=result.model,
                    version=result.version,
                )
            return
        if self.machine.state is not SafetyState.RECOVERING:
            return
        verdict = compare_outputs(
            expected,
            result.output,
            min_iou=self.config.probe.min_iou,
            score_tol=self.config.probe.score_tol,
        )
        self._apply(self.machine.probe_result(verdict.passed, verdict.detail, now))

    def poll_timeout_ms(self) -> float:
        """Until the next deadline of a watched node (so it is seen overdue at once), or the
        next turn."""
        assert self.machine is not None
        now = self.node.clock()
        wait = 20.0 if self.client.in_flight else _TURN_MS
        for due in (self.liveness.next_due_ns(), self.machine.recovery_due_ns(now)):
            if due is not None:
                wait = min(wait, max(0.0, (due - now) / 1e6 + 1.0))
        self.turn_due_ns = now + int(wait * 1e6)
        return wait

    # -- output --------------------------------------------------------------------------

    def _apply(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self._publish(transition)
        if transition.state is SafetyState.DEGRADED:
            self.probe_seq = 0
            self.reprobe_ns = None

    # implements: SR-WDG-003
    def _publish(self, t: Transition, *, audited: bool = True) -> None:
        assert self.machine is not None
        self.capacity = self._capacity()
        rate = self.machine.transitions_per_min(t.at_ns)
        self.node.publisher.publish(
            Topic.SAFETY_STATE,
            StateChange(
                state=t.state,
                previous=t.previous,
                cause=t.cause[:256],
                since_ns=t.at_ns,
                transitions=self.machine.transitions,
                capacity=self.capacity,
                transitions_per_min=rate,
            ),
        )
        if audited:  # a state said again (capacity, the bus back) is no new decision
            self.node.audit(AuditId.STATE_TRANSITION, f"{t.previous} -> {t.state}: {t.cause}")
        self.node.record(
            "warning" if t.state is not SafetyState.NORMAL else "info",
            "watchdog.transition",
            previous=t.previous.value,
            state=t.state.value,
            cause=t.cause,
            capacity=self.capacity,
        )
        self.rate = rate
        self._show()

    def _show(self) -> None:
        """Put the state, its capacity and rate, and the error tallies into the heartbeat
        (read by its thread)."""
        assert self.machine is not None
        watched = sorted(n for n, e in self.liveness.entries.items() if e.kind != TOPIC_KIND)
        self.watching = len(self.liveness.entries)
        self.node.heartbeat_detail = {
            "state": self.machine.state.value,
            "capacity": f"{self.capacity:.3f}",
            "transitions_per_min": str(self.rate),
            "errors_seen": str(self.errors_seen),
            "timeouts_seen": str(self.timeouts_seen),
            # The nodes whose heartbeats it expects: what a missing beat would degrade.
            "watching": ",".join(watched),
        }


# Probe errors that say the pipeline was busy, not wrong: the recovery is judged again later.
_INCONCLUSIVE = frozenset({ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED})
_CORE = {Topic.HEARTBEAT, Topic.NODE_EXIT, Topic.INFER_RESULT, Topic.INFER_ERROR}


# implements: SR-DLN-003
def _system_miss(reply: ErrorReply) -> bool:
    """Whether an error is a deadline the system missed, the only kind that counts.

    A budget already spent or impossible when the request arrived is refused at admission
    with its own code (`DEADLINE_INFEASIBLE`): the client's fault, never a fault of the
    system. An error that names no code at all is counted, to be safe.
    """
    return reply.code is ErrorCode.DEADLINE_EXCEEDED and reply.diag_code in (
        "",
        DiagCode.DEADLINE_EXCEEDED,
    )


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
            if watchdog.client.owns(events) or watchdog.client.in_flight:
                watchdog.on_probe()
            watchdog.check()
        assert watchdog.machine is not None
        node.log.info("node.stopping", reason=node.stop_reason, state=watchdog.machine.state)
    return ExitCode.OK
