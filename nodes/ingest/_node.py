"""The ingest node's loop: clients on a ROUTER, workers on a ROUTER, the bus on the side."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import psutil
import zmq

from vigil.bus.channel import Channel, FrameFault, Incoming, drain_events
from vigil.bus.clock import wall_ns
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.rundir import resolve_endpoint
from vigil.bus.shm import SharedFrameError, SharedFrames, ensure_pool_dir, sweep_stale_pools
from vigil.nodes._dedup import RecentAnswers
from vigil.nodes._runtime import Node
from vigil.nodes._tracing import request_spans
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.ingest._contract import KIND, DegradedPolicy, IngestConfig
from vigil.nodes.ingest._dispatch import Dispatcher, Request
from vigil.nodes.ingest._evidence import Evidence, RequestPath, peer_of
from vigil.nodes.ingest._exits import WorkerExits
from vigil.nodes.ingest._ratelimit import RateLimiter
from vigil.nodes.ingest._validate import (
    Limits,
    Rejection,
    RequestValidator,
    rejection_from_fault,
)
from vigil.schemas import (
    AuditId,
    DiagCode,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferRequest,
    InferResult,
    Message,
    ModelAnnouncement,
    Outcome,
    SafetyState,
    Severity,
    StateChange,
    Topic,
    WorkerCredit,
)

__all__ = ["run"]

_BURST = 64
_SAFETY_PRIORITY = 7  # the watchdog's probe: never shed
# How often the ingest looks for shared-memory pools whose client process is gone.
_REAP_NS = 5_000_000_000


@dataclass(slots=True)
class _Admission:
    """A client's request, read and valid, on its way up the admission checks."""

    identity: bytes
    frames: list[zmq.Frame]
    incoming: Incoming
    request: InferRequest
    trace: TraceContext  # the ingest's span: a child of the client's, when it sent one
    received_ns: int
    deadline: Deadline

    @property
    def envelope(self) -> Envelope:
        """The client's envelope."""
        return self.incoming.envelope

    def refusal(self, rejection: Rejection) -> _Refusal:
        """The refusal of this request for `rejection`."""
        path = _path(self.trace, self.envelope, self.received_ns, self.request)
        return _Refusal(self.identity, self.envelope.seq, rejection, path, self.request)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A refused request with what the refusal can name: only what was decoded before it."""

    identity: bytes
    seq: int
    rejection: Rejection
    path: RequestPath
    request: InferRequest | None = None

    @property
    def trace(self) -> TraceContext:
        """The ingest's span of the refused request."""
        return self.path.trace


def _path(
    trace: TraceContext, envelope: Envelope, received_ns: int, request: InferRequest | None
) -> RequestPath:
    """The evidence path of a request read as far as its envelope (and maybe its body)."""
    return RequestPath(
        trace=trace,
        parent=envelope.trace,
        received_ns=received_ns,
        peer=peer_of(envelope),
        tenant=envelope.tenant,
        stream_id=request.stream_id if request is not None else "",
        frame_ts_us=request.frame_ts_us if request is not None else 0,
    )


class _Ingest:
    """State and handlers of one ingest process (the loop lives in `run`)."""

    def __init__(self, node: Node, config: IngestConfig) -> None:
        self.node = node
        self.config = config
        self.frontend = node.socket(zmq.ROUTER, serve=config.frontend)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.frontend.setsockopt(zmq.SNDHWM, 0)
        self.frontend.bind(resolve_endpoint(node.run, config.frontend))
        self.backend = node.socket(zmq.ROUTER, serve=config.backend)
        self.backend.setsockopt(zmq.SNDHWM, 0)
        self.backend.bind(resolve_endpoint(node.run, config.backend))
        # A worker's disconnect wakes the ingest at once; it then checks which local worker
        # process is gone and re-dispatches that worker's work (silence covers remote ones).
        self.monitor = node.enter(self.backend.get_monitor_socket(zmq.EVENT_DISCONNECTED))
        self.monitor.setsockopt(zmq.LINGER, 0)
        node.poller.register(self.monitor, zmq.POLLIN)
        # The exit of a local worker process itself, which the drop can precede (`_exits`).
        self.exits: WorkerExits = node.enter(WorkerExits(node.poller))
        self.hostname = socket.gethostname()
        self.clients = Channel(self.frontend, source=node.args.name, routed=True)
        self.workers = Channel(self.backend, source=node.args.name, routed=True)
        # Worker heartbeats (from their own thread) prove a busy worker alive; a stopped or
        # hung one falls silent and its work is re-dispatched. The committed model is latched:
        # until one is, no request could ever be served.
        self.state_sub = node.subscriber([Topic.SAFETY_STATE, Topic.MODEL_ACTIVE])
        # Every node beats several times a second; only a silent worker holding work matters,
        # and that is checked on the loop's own tick: the beats never wake the loop.
        self.beats = node.subscriber([Topic.HEARTBEAT], wake=False)
        node.poller.register(self.frontend, zmq.POLLIN)
        node.poller.register(self.backend, zmq.POLLIN)
        self.validator = RequestValidator(
            Limits(
                max_message_bytes=config.max_message_bytes,
                max_height=config.max_height,
                max_width=config.max_width,
            )
        )
        self.limiter = RateLimiter(config.rate_limit, node.clock)
        self.dispatcher = Dispatcher(max_queue=config.max_queue)
        self.state = SafetyState.NORMAL
        # The share of the request path alive (from the watchdog): see `_check_policy`.
        self.capacity = 1.0
        self.model: ModelAnnouncement | None = None
        # Request ids answered lately, and the answer each got: a request re-sent by a
        # client that failed over (and back) is answered again, not executed again.
        self.answered: RecentAnswers[InferResult | ErrorReply] = RecentAnswers(config.dedup_window)
        # Open requests by request id: a copy that arrives while the first is open joins it.
        self.open_ids: dict[bytes, int] = {}
        # When a heartbeat (anyone's) last came through the bus: worker silence is judged
        # only while the bus itself carries beats.
        self.bus_heard_ns = node.clock()
        self.beat_period_ns = 0  # the workers' heartbeat period, once one beat
        self.counts = {"accepted": 0, "answered": 0, "rejected": 0, "errors": 0, "repeats": 0}
        # Spans, exported only where OpenTelemetry is set up; evidence of every request.
        self.spans = node.enter(request_spans(f"vigil.{node.args.name}"))
        self.evidence = Evidence(
            node.publisher, self.spans, node.clock, publish=config.publish_evidence
        )
        self._published: tuple[int, ...] = ()
        # Same-host clients' shared-memory pools, each bound to the first client that used it
        # (see bus/shm.py).
        sweep_stale_pools()  # pools of dead clients left by earlier runs on this host
        directory = ensure_pool_dir(node.run.path)
        self.pools: SharedFrames = node.enter(SharedFrames(directory, remove_directory=True))
        self.pool_owners: dict[str, bytes] = {}
        self._next_reap = node.clock() + _REAP_NS
        # What a valid request must pass to be queued, in order; the first rejection refuses
        # it. The policy goes before the rate limit, so a shed request spends no token.
        self._checks: tuple[Callable[[_Admission], Rejection | None], ...] = (
            self._check_shared_frame,
            self._check_model,
            self._check_policy,
            self._check_rate,
            self._check_deadline,
            self._check_queue,
        )

    # -- clients -------------------------------------------------------------------------

    def on_client(self) -> None:
        for _ in range(_BURST):
            try:
                frames = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._admit(frames)

    def _admit(self, frames: list[zmq.Frame]) -> None:
        """Admit one client request, or refuse it at the first check it fails.

        The ladder: read it (size, decode, validate), then each of `self._checks`; only a
        request that passes them all is queued.
        """
        admission = self._read(frames)
        if isinstance(admission, _Refusal):
            self._refuse(admission)
            return
        if admission is None:
            return  # a copy of a request this ingest has or had: handled by `_repeat`
        for check in self._checks:
            rejection = check(admission)
            if rejection is not None:
                self._refuse(admission.refusal(rejection))
                return
        self._accept(admission)

    def _read(self, frames: list[zmq.Frame]) -> _Admission | _Refusal | None:
        """Size, decode, validate: the request to admit, or its refusal with what is known,
        or None for a copy of a request seen before (answered by `_repeat`)."""
        identity = frames[0].bytes
        now = self.node.clock()
        try:
            self.validator.check_size(frames[1:])
            incoming = self.clients.decode(frames)
        except Rejection as rejection:
            # Refused before its body is decoded; its envelope alone is read when it is small.
            return self._refusal(identity, rejection, self.clients.peek_envelope(frames), now)
        except FrameFault as fault:
            return self._refusal(identity, rejection_from_fault(fault), fault.envelope, now, fault)
        envelope = incoming.envelope
        # Before validation: a copy repeats its original's timestamp, which is no fault.
        if envelope.request_id and self._repeat(identity, envelope):
            return None
        trace = _ingest_trace(envelope)
        try:
            request = self.validator.check(incoming)
        except Rejection as rejection:
            body = incoming.body if isinstance(incoming.body, InferRequest) else None
            path = _path(trace, envelope, now, body)
            return _Refusal(identity, envelope.seq, rejection, path, body)
        deadline = Deadline.after(self._budget_ns(envelope), now)
        return _Admission(identity, frames, incoming, request, trace, now, deadline)

    def _refusal(
        self,
        identity: bytes,
        rejection: Rejection,
        envelope: Envelope | None,
        now: int,
        fault: FrameFault | None = None,
    ) -> _Refusal:
        """The refusal of frames whose body did not decode: in the sender's trace whenever
        its envelope was readable, else in a trace of its own (as for a request sent without
        one), so its reply and its evidence still share an id."""
        if envelope is None:
            seq = fault.seq if fault is not None else 0
            path = RequestPath(TraceContext.new(), None, now)
            return _Refusal(identity, seq, rejection, path)
        path = _path(_ingest_trace(envelope), envelope, now, None)
        return _Refusal(identity, envelope.seq, rejection, path)

    # implements: SR-RED-002
    def _repeat(self, identity: bytes, envelope: Envelope) -> bool:
        """A copy of a request this ingest has open or answered lately (its client failed
        over and back): the open one answers the copy's sender, the answered one's answer is
        sent again. Either way it is not executed twice. False for a request not seen."""
        rid = self.open_ids.get(envelope.request_id)
        request = self.dispatcher.open.get(rid) if rid is not None else None
        if request is not None:
            request.client, request.client_seq = identity, envelope.seq
            self.counts["repeats"] += 1
            return True
        answer = self.answered.get(envelope.request_id)
        if answer is None:
            return False
        env = self.clients.envelope(answer, seq=envelope.seq, trace=envelope.trace)
        self.clients.send(answer, identity=[identity], envelope=env)
        self.counts["repeats"] += 1
        return True

    def _remember(self, request: Request, answer: InferResult | ErrorReply) -> None:
        """A request was answered: forget it as open, remember its answer for a repeat."""
        self.open_ids.pop(request.request_id, None)
        self.answered.keep(request.request_id, answer)

    def _budget_ns(self, envelope: Envelope) -> int:
        """The client's budget in whole ms, at most the maximum; the default when it set none."""
        budget_ns = envelope.budget_ns
        if budget_ns is None:
            return self.config.default_deadline_ms * 1_000_000
        return min(budget_ns // 1_000_000, self.config.max_deadline_ms) * 1_000_000

    def _check_shared_frame(self, admission: _Admission) -> Rejection | None:
        """Refuse a shared-memory descriptor that is not this client's, or names no current
        frame: the pool's owner, the slot's bounds and size, its generation. No pixel is read."""
        ref = admission.request.shm
        if ref is None:
            return None
        h, w, c = admission.request.image.shape
        try:
            self.pools.check(ref, h * w * c)
        except SharedFrameError as exc:
            return Rejection(DiagCode.RANGE_OR_SEQUENCE, exc.field, exc.rule)
        # The client, not its connection: a link that dropped and came back is a new
        # connection of the same client, which its session (the first half of its request
        # ids, random and the same on every link) names; a request without one is its
        # connection's alone.
        client = admission.envelope.request_id[:8] or admission.identity
        if self.pool_owners.setdefault(ref.pool, client) != client:
            return Rejection(
                DiagCode.AUTH_REFUSED,
                "$.shm.pool",
                "the pool belongs to another client",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        return None

    def _check_model(self, admission: _Admission) -> Rejection | None:
        """Refuse at once while no verified model is active (and no worker serves one).

        Refused rather than left to time out: the client learns why, and the watchdog does
        not take a missing model for inference timeouts.
        """
        if not self.config.require_model or self.model is not None or self.dispatcher.workers:
            return None
        return Rejection(
            DiagCode.NO_MODEL, "$", "no verified model is active", code=ErrorCode.UNAVAILABLE
        )

    # implements: SR-WDG-003
    def _check_policy(self, admission: _Admission) -> Rejection | None:
        """Refuse what the degraded policy sheds while the system is not NORMAL.

        Shedding follows the capacity lost, not the state alone: with the request path whole
        (a fault elsewhere: logger, loader, proxy) nothing is refused; with part of it gone,
        `shed_low_priority` admits a low-priority request while the surviving workers have
        credit for it, and refuses the rest at once instead of letting them queue past their
        deadlines: the pool serves at the rate that is left. SAFE_STOP refuses all but the
        probe.
        """
        if self.state is SafetyState.NORMAL:
            return None
        policy = self.config.degraded_policy
        priority = admission.envelope.priority
        if self.state is SafetyState.SAFE_STOP:
            refuse = priority < _SAFETY_PRIORITY
        elif self.capacity >= 1.0 or policy is DegradedPolicy.FLAG:
            refuse = False
        elif policy is DegradedPolicy.REJECT:
            refuse = priority < _SAFETY_PRIORITY
        elif priority >= self.config.shed_below_priority:
            refuse = False
        else:
            refuse = not self._spare_credit()
        if not refuse:
            return None
        return Rejection(
            DiagCode.RATE_LIMITED,
            "$.priority",
            f"system is {self.state} at capacity {self.capacity:.2f}:"
            f" {policy} policy refuses this request",
            code=ErrorCode.UNAVAILABLE,
        )

    # implements: SR-DEG-001
    def _spare_credit(self) -> bool:
        """Whether the live workers can take one more request beyond those queued."""
        free = sum(
            w.credit for w in self.dispatcher.workers.values() if not w.suspect and w.credit > 0
        )
        return free > len(self.dispatcher.queue)

    def _check_rate(self, admission: _Admission) -> Rejection | None:
        """Refuse a request over its tenant's token-bucket rate (this spends a token)."""
        envelope = admission.envelope
        decision = self.limiter.decide(envelope.tenant, envelope.priority)
        if decision.allowed:
            return None
        return Rejection(
            DiagCode.RATE_LIMITED,
            "$.tenant",
            "rate limit exceeded",
            code=ErrorCode.RESOURCE_EXHAUSTED,
            retry_after_ms=decision.retry_after_ms,
        )

    def _check_deadline(self, admission: _Admission) -> Rejection | None:
        """Refuse a request whose deadline had passed when it arrived."""
        if not admission.deadline.expired(admission.received_ns):
            return None
        return Rejection(
            DiagCode.DEADLINE_EXCEEDED,
            "$.deadline_wall_ns",
            "deadline already passed",
            code=ErrorCode.DEADLINE_EXCEEDED,
        )

    def _check_queue(self, admission: _Admission) -> Rejection | None:
        """Refuse a request the full queue cannot take."""
        if self.dispatcher.has_room():
            return None
        return Rejection(
            DiagCode.RATE_LIMITED,
            "$",
            "ingest queue is full",
            code=ErrorCode.RESOURCE_EXHAUSTED,
            retry_after_ms=self.config.default_deadline_ms // 10,
        )

    def _accept(self, admission: _Admission) -> None:
        """Queue an admitted request for a worker, open its span and publish it."""
        envelope, request = admission.envelope, admission.request
        pending = Request(
            rid=self.dispatcher.new_rid(),
            client=admission.identity,
            client_seq=envelope.seq,
            trace=admission.trace,
            deadline=admission.deadline,
            received_ns=admission.received_ns,
            frames=[admission.frames[2], *admission.incoming.buffers],
            stream_id=request.stream_id,
            frame_ts_us=request.frame_ts_us,
            priority=envelope.priority,
            tenant=envelope.tenant,
            parent=envelope.trace,
            peer=peer_of(envelope),
            admitted_ns=self.node.clock(),
            request_id=envelope.request_id,
        )
        self.dispatcher.admit(pending)  # cannot refuse: the queue check found room
        if pending.request_id:
            self.open_ids[pending.request_id] = pending.rid
        self.validator.accept(request)
        self.counts["accepted"] += 1
        if self.config.publish_requests:
            published = request
            buffers: list[bytes | zmq.Frame] = list(admission.incoming.buffers)
            if request.shm is not None:
                # Taps and bags get the pixels themselves (a copy, made only for them): a
                # descriptor would name a slot the client reuses as soon as it is answered.
                published = msgspec.structs.replace(request, shm=None)
                h, w, c = request.image.shape
                buffers = [bytes(self.pools.frame(request.shm, h * w * c))]
            self.node.publisher.publish(
                Topic.INFER_REQUEST,
                published,
                trace=admission.trace,
                buffers=buffers,
                priority=envelope.priority,
                tenant=envelope.tenant,
            )

    # implements: SR-ERR-002
    def _refuse(self, refusal: _Refusal) -> None:
        rejection, request, trace = refusal.rejection, refusal.request, refusal.trace
        reply = ErrorReply(
            code=rejection.code,
            message=_MESSAGES[rejection.code],
            field=rejection.field[:128],
            rule=rejection.rule[:128],
            retry_after_ms=rejection.retry_after_ms,
            diag_code=rejection.diag,
            stream_id=request.stream_id if request else "",
            frame_ts_us=request.frame_ts_us if request else 0,
        )
        body = self._answer(refusal.identity, refusal.seq, reply, trace)
        self.counts["rejected"] += 1
        # Each refusal reported on its own has its evidence too.
        self.evidence.ended(refusal.path, reply, body, outcome=Outcome.REFUSED, model=self.model)
        self.node.diag(
            rejection.diag,
            f"request refused: {rejection.code}",
            field=rejection.field,
            rule=rejection.rule,
            stream_id=reply.stream_id,
            trace=trace,
        )

    def _answer(
        self, identity: bytes, seq: int, reply: Message, trace: TraceContext | None
    ) -> bytes:
        """Send `reply` to the client in its trace and publish it; returns its encoded body."""
        body = self.clients.encode(reply)
        env = self.clients.envelope(reply, seq=seq, trace=trace)
        self.clients.forward([body], identity=[identity], envelope=env)
        topic = Topic.INFER_RESULT if isinstance(reply, InferResult) else Topic.INFER_ERROR
        self.node.publisher.publish(topic, reply, trace=trace)
        return body

    def _ended(
        self, request: Request, reply: InferResult | ErrorReply, body: bytes, outcome: Outcome
    ) -> None:
        """The one place an admitted request's evidence is written, once it is answered."""
        path = RequestPath(
            trace=request.trace,
            parent=request.parent,
            received_ns=request.received_ns,
            peer=request.peer,
            tenant=request.tenant,
            stream_id=request.stream_id,
            frame_ts_us=request.frame_ts_us,
            admitted_ns=request.admitted_ns,
            dispatched_ns=request.dispatched_ns,
            attempts=request.attempts,
        )
        self.evidence.ended(path, reply, body, outcome=outcome, model=self.model)

    def _fail(self, request: Request, code: ErrorCode, diag: DiagCode, why: str) -> None:
        reply = ErrorReply(
            code=code,
            message=why,
            diag_code=diag,
            stream_id=request.stream_id,
            frame_ts_us=request.frame_ts_us,
        )
        body = self._answer(request.client, request.client_seq, reply, request.trace)
        self._remember(request, reply)
        self.counts["errors"] += 1
        self._ended(request, reply, body, Outcome.FAILED)
        self.node.diag(
            diag,
            why,
            severity=Severity.ERROR,
            stream_id=request.stream_id,
            trace=request.trace,
        )

    # -- workers -------------------------------------------------------------------------

    def on_worker(self) -> None:
        for _ in range(_BURST):
            try:
                frames = self.backend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._from_worker(frames)

    # implements: SR-DLN-002
    def on_disconnect(self) -> None:
        """A worker connection dropped: find the local worker processes that are gone."""
        drain_events(self.monitor)
        for identity, slot in list(self.dispatcher.workers.items()):
            if slot.pid and slot.host == self.hostname and not _alive(slot.pid):
                self._worker_lost(identity, "exited")

    # implements: SR-DLN-002
    def on_exits(self, pids: list[int]) -> None:
        """Local worker processes exited: every connection of theirs is lost."""
        for identity, slot in list(self.dispatcher.workers.items()):
            if slot.pid in pids and slot.host == self.hostname:
                self._worker_lost(identity, "exited")

    def _from_worker(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        now = self.node.clock()
        try:
            incoming = self.workers.decode(frames)
        except FrameFault as fault:
            self.node.record("error", "worker.bad_frame", what=fault.what, rule=fault.rule)
            return
        body = incoming.body
        slot = self.dispatcher.worker_seen(identity, now, incoming.envelope.source)
        if isinstance(body, WorkerCredit):
            # The whole capacity, re-sent on every new connection: idempotent here.
            slot.capacity = body.credit
            slot.pid = body.pid
            slot.host = body.host
            if body.host == self.hostname:
                self.exits.watch(body.pid)
            for old in self.dispatcher.same_process(slot):
                # The worker reconnected; what it held on the old connection goes elsewhere.
                self._worker_lost(old, "reconnected", failed=False)
            return
        request = self.dispatcher.complete(identity, incoming.envelope.seq)
        if request is None:
            return  # answered already (deadline) or a late reply from a presumed-hung worker
        if isinstance(body, InferResult):
            if self.state is not SafetyState.NORMAL:
                body = msgspec.structs.replace(body, degraded=True)
            sent = self._answer(request.client, request.client_seq, body, request.trace)
            self._remember(request, body)
            self.counts["answered"] += 1
            self._ended(request, body, sent, Outcome.SERVED)
        elif isinstance(body, ErrorReply):
            sent = self._answer(request.client, request.client_seq, body, request.trace)
            self._remember(request, body)
            self.counts["errors"] += 1
            self._ended(request, body, sent, Outcome.FAILED)

    def _worker_lost(self, identity: bytes, why: str, *, failed: bool = True) -> None:
        slot = self.dispatcher.workers.get(identity)
        name = slot.name if slot else identity.hex()
        held = len(slot.inflight) if slot else 0
        exhausted = self.dispatcher.worker_lost(identity)
        if held:
            self.node.diag(
                DiagCode.WORKER_LOST,
                f"worker {name} {why} holding {held} requests; re-dispatched",
                severity=Severity.ERROR,
            )
            if failed:  # a reconnected worker's process is alive: nothing failed
                self.node.audit(AuditId.NODE_FAILED, f"worker {name} {why}")
        for request in exhausted:
            self._fail(request, ErrorCode.UNAVAILABLE, DiagCode.WORKER_LOST, "worker lost twice")

    # -- time ----------------------------------------------------------------------------

    # implements: SR-DLN-001
    def on_time(self) -> None:
        now = self.node.clock()
        if now >= self._next_reap:
            self._next_reap = now + _REAP_NS
            self.reap_pools()
        for request in self.dispatcher.expired(now):
            self._fail(
                request,
                ErrorCode.DEADLINE_EXCEEDED,
                DiagCode.DEADLINE_EXCEEDED,
                "deadline exceeded before a result",
            )
        # Silent: no word for `worker_silence_ms`, or for 2.5 heartbeat periods (the
        # watchdog's rule) when that is sooner: a hung worker's work moves on as soon as the
        # hang is known, not a second later.
        silence_ns = self.config.worker_silence_ms * 1_000_000
        if self.beat_period_ns:
            silence_ns = min(silence_ns, self.beat_period_ns * 5 // 2)
        if now - self.bus_heard_ns > silence_ns // 2:
            return  # no heartbeat from anyone: the bus is down, not every worker at once
        for slot, exhausted in self.dispatcher.worker_silent(now, silence_ns):
            self.node.diag(
                DiagCode.WORKER_LOST,
                f"worker {slot.name} silent for {silence_ns // 1_000_000} ms; "
                "its work was re-dispatched",
                severity=Severity.ERROR,
            )
            for request in exhausted:
                self._fail(
                    request, ErrorCode.UNAVAILABLE, DiagCode.WORKER_LOST, "worker lost twice"
                )

    def reap_pools(self) -> None:
        """Remove the pools of clients whose process is gone (their slots with them), and
        forget those their clients closed."""
        for name in self.pools.reap():
            self.node.record("info", "ingest.pool_reaped", pool=name)
        self.pools.prune()
        self.pool_owners = {n: o for n, o in self.pool_owners.items() if self.pools.exists(n)}

    def dispatch(self) -> None:
        # Both clocks read once: every deadline sent in this pass converts by the same offset.
        now_wall, now_mono = wall_ns(), self.node.clock()
        for slot, request in self.dispatcher.assignments():
            request.dispatched_ns = now_mono
            envelope = self.workers.envelope(
                InferRequest,
                seq=request.rid,
                trace=request.trace,
                deadline_wall_ns=request.deadline.to_wall_ns(
                    now_wall_ns=now_wall, now_mono_ns=now_mono
                ),
                priority=request.priority,
                tenant=request.tenant,
                request_id=request.request_id,
            )
            self.workers.forward(request.frames, identity=[slot.identity], envelope=envelope)

    def on_bus(self) -> None:
        while (received := self.state_sub.recv(0)) is not None:
            body = received.body
            if isinstance(body, StateChange):
                self.state = body.state
                self.capacity = body.capacity
            elif isinstance(body, ModelAnnouncement):
                self.model = body

    def on_beats(self) -> None:
        """Drain the heartbeats (on every turn of the loop): the bus carries beats, and a
        beating worker is not silent."""
        now = self.node.clock()
        while (received := self.beats.recv(0)) is not None:
            body = received.body
            if not isinstance(body, Heartbeat):
                continue
            self.bus_heard_ns = now
            if body.kind == "worker":
                self.beat_period_ns = max(self.beat_period_ns, body.period_ms * 1_000_000)
                for slot in self.dispatcher.workers.values():
                    if slot.name == body.node and slot.pid == body.pid:
                        slot.last_heard_ns = now

    def publish_counts(self) -> None:
        """Put the cumulative counters into the heartbeat (the metrics node reads them).

        A new dict replaces the old one only when a count moved: the heartbeat thread copies
        whichever it finds, and the loop allocates nothing while the ingest is idle.
        """
        current = (self.limiter.allowed, self.limiter.refused, *self.counts.values())
        if current == self._published:
            return
        self._published = current
        detail = {key: str(value) for key, value in self.counts.items()}
        detail["rate_allowed"] = str(self.limiter.allowed)
        detail["rate_refused"] = str(self.limiter.refused)
        self.node.heartbeat_detail = detail

    def timeout_ms(self) -> float | None:
        """Until the next deadline, and at most 100 ms while work is open (worker silence is
        checked on that tick); None when nothing is open: the loop sleeps until traffic."""
        deadline = self.dispatcher.next_deadline()
        if deadline is None:
            return None
        return max(0.0, min(100.0, deadline.remaining_ns(self.node.clock()) / 1e6))


# implements: SR-ING-004
_MESSAGES = {
    ErrorCode.INVALID_ARGUMENT: "request failed validation",
    ErrorCode.DEADLINE_EXCEEDED: "deadline exceeded",
    ErrorCode.UNAVAILABLE: "service unavailable",
    ErrorCode.RESOURCE_EXHAUSTED: "resource exhausted",
    ErrorCode.INTERNAL: "internal error",
}


def _ingest_trace(envelope: Envelope) -> TraceContext:
    """The ingest's span of a request: a child of the client's, or the root of a new trace."""
    client = envelope.trace
    return client.child() if client is not None else TraceContext.new()


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie awaiting its parent's reaping does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(config: IngestConfig, args: NodeArgs) -> ExitCode:
    """Serve requests until SIGTERM/SIGINT, then answer what is still open and exit."""
    with Node(args) as node:
        ingest = _Ingest(node, config)
        node.ready(KIND.contract(config))
        while not node.stopping:
            events = node.poll(ingest.timeout_ms())
            if events.get(ingest.state_sub.socket):
                ingest.on_bus()
            if events.get(ingest.backend):
                ingest.on_worker()
            if events.get(ingest.monitor):
                ingest.on_disconnect()
            if exited := ingest.exits.handle(events):
                ingest.on_exits(exited)
            if events.get(ingest.frontend):
                ingest.on_client()
            ingest.on_beats()
            ingest.on_time()
            ingest.dispatch()
            ingest.publish_counts()
            ingest.evidence.turn_ended()
        # Nothing is silently dropped on the way out: open requests get UNAVAILABLE.
        for rid in list(ingest.dispatcher.open):
            request = ingest.dispatcher.close(rid)
            if request is not None:
                ingest._fail(
                    request, ErrorCode.UNAVAILABLE, DiagCode.WORKER_LOST, "ingest shutting down"
                )
        ingest.evidence.flush()
        node.log.info("node.stopping", reason=node.stop_reason, **ingest.counts)
    return ExitCode.OK
