"""The ingest node's loop: clients on a ROUTER, workers on a ROUTER, the bus on the side."""

from __future__ import annotations

import hashlib
import queue
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil
import zmq

from vigil.bus.channel import Channel, FrameFault, Incoming, drain_events
from vigil.bus.clock import wall_ns
from vigil.bus.curve import REFUSAL_EVENTS, applies, load_public
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope, TraceContext, new_span_id
from vigil.bus.rundir import resolve_endpoint
from vigil.bus.shm import SharedFrameError, SharedFrames, ensure_pool_dir, sweep_stale_pools
from vigil.nodes._dedup import RecentAnswers
from vigil.nodes._preload import shared_object
from vigil.nodes._runtime import Node
from vigil.nodes._tracing import request_spans
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.ingest._contract import (
    KIND,
    DegradedPolicy,
    IngestConfig,
    max_frame_bytes,
    rss_budget,
    rss_threshold,
)
from vigil.nodes.ingest._dispatch import Dispatcher, Request
from vigil.nodes.ingest._door import ACCEPT_MARGIN, Door, accept_guard, fd_headroom
from vigil.nodes.ingest._evidence import Evidence, RequestPath
from vigil.nodes.ingest._exits import WorkerExits
from vigil.nodes.ingest._peers import Identities, Peer
from vigil.nodes.ingest._ratelimit import RateLimiter, TokenBucket
from vigil.nodes.ingest._refusals import Aggregate, RefusalLog, Summary
from vigil.nodes.ingest._replies import Delivery, Replies
from vigil.nodes.ingest._service import ServiceModel
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
_BURST_BYTES = 1 << 20


@dataclass(slots=True)
class _Admission:
    """A client's request, read and valid, on its way up the admission checks."""

    identity: bytes
    peer: Peer
    frames: list[zmq.Frame]
    incoming: Incoming
    request: InferRequest
    trace: TraceContext  # the ingest's span: a child of the client's, when it sent one
    received_ns: int
    deadline: Deadline
    nbytes: int
    pixels: int
    cost_ns: int = 1
    tenant: str = ""  # the tenant it counts against, once its claim was judged
    victims: list[Request] = field(default_factory=list)  # to shed so that it fits

    @property
    def envelope(self) -> Envelope:
        """The client's envelope."""
        return self.incoming.envelope

    def refusal(self, rejection: Rejection) -> _Refusal:
        """The refusal of this request for `rejection`."""
        path = _path(self.trace, self.envelope, self.received_ns, self.peer, self.request)
        return _Refusal(self.identity, self.peer, self.envelope.seq, rejection, path, self.request)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A refused request with what the refusal can name: only what was decoded before it."""

    identity: bytes
    peer: Peer
    seq: int
    rejection: Rejection
    path: RequestPath
    request: InferRequest | None = None

    @property
    def trace(self) -> TraceContext:
        """The ingest's span of the refused request (every refusal has one)."""
        return self.path.trace


def _path(
    trace: TraceContext,
    envelope: Envelope,
    received_ns: int,
    peer: Peer,
    request: InferRequest | None,
) -> RequestPath:
    """The evidence path of a request read as far as its envelope (and maybe its body)."""
    return RequestPath(
        trace=trace,
        parent=envelope.trace,
        received_ns=received_ns,
        peer=peer.name,
        tenant=envelope.tenant,
        stream_id=request.stream_id if request is not None else "",
        frame_ts_us=request.frame_ts_us if request is not None else 0,
    )


class _Ingest:
    """State and handlers of one ingest process (the loop lives in `run`)."""

    def __init__(self, node: Node, config: IngestConfig) -> None:
        self.node = node
        self.config = config
        frontend = resolve_endpoint(node.run, config.frontend)
        self.frontend = node.socket(zmq.ROUTER, serve=config.frontend)
        # Bounded by bytes at the socket: no frame of twice the size limit is taken in (one
        # over it still gets its typed refusal; beyond, the connection is dropped), one
        # message per client waits unread, and replies to a client that does not read fail
        # at once (EAGAIN) instead of piling up; one to a client that left fails too.
        self.frontend.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(config))
        # With Curve and ZAP, libzmq needs one more place in a connection's receive queue:
        # with one alone, no message ever arrives.
        curve = node.gate is not None and applies(frontend)
        self.frontend.setsockopt(zmq.RCVHWM, config.peer_backlog + (1 if curve else 0))
        self.frontend.setsockopt(zmq.SNDHWM, config.reply_backlog)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.frontend.setsockopt(zmq.HANDSHAKE_IVL, config.handshake_ms)
        self.budget_bytes = rss_budget(config)
        guard = accept_guard()
        if guard is None:
            node.log.warning("ingest.accept_guard_absent", reason=_unguarded(), defence="door only")
        self.door: Door = node.enter(
            Door(
                node.ctx,
                self.frontend,
                limit=_connection_limit(config.max_connections),
                per_peer=config.max_connections_per_peer,
                clock=node.clock,
                rss_threshold=rss_threshold(config),
                guard=guard,
                **_gate_events(node, frontend),
            )
        )
        self.frontend.bind(frontend)
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
        self.replies = Replies(self.clients, max_peers=4 * self.door.limit)
        self._door_unaudited: list[str] = []
        self._door_audit_ns = 0
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
        self.identities = Identities(
            config.bindings,
            default_max_priority=config.default_max_priority,
            resolve_key=lambda key: _public_key(node, key),
            node_keys=_node_keys(node),
            node_pids=lambda: _node_pids(node),
        )
        self.limiter = RateLimiter(config.rate_limit, node.clock)
        self.peer_limiter = RateLimiter(config.peer_rate_limit, node.clock)
        self.dispatcher = Dispatcher(
            max_queue=config.max_queue,
            max_bytes=config.max_queue_bytes,
            active_ns=config.peer_active_ms * 1_000_000,
            yield_ns=config.background_yield_ms * 1_000_000,
            bulk_ns=config.bulk_ms * 1_000_000,
        )
        self.service = ServiceModel()
        evidence = config.evidence
        self.refusals = RefusalLog(
            clock=node.clock,
            rate_per_s=evidence.rate_per_s,
            burst=evidence.burst,
            peer_rate_per_s=evidence.peer_rate_per_s,
            peer_burst=evidence.peer_burst,
            interval_ns=evidence.aggregate_ms * 1_000_000,
            audit_interval_ns=evidence.audit_ms * 1_000_000,
        )
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
        self.counts = {
            "accepted": 0,
            "answered": 0,
            "rejected": 0,
            "errors": 0,
            "shed": 0,
            "repeats": 0,
            "replies_dropped": 0,
            "reads_held": 0,
        }
        # Refusals pace the reading of clients (`refusals_per_s`); None: no pace.
        self.refusal_pace = (
            TokenBucket(config.refusals_per_s, config.refusal_burst, node.clock())
            if config.refusals_per_s
            else None
        )
        self.reading_held_until: int | None = None
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
        # it. Claims are judged first; a request refused for its budget or by the policy
        # spends no token; the capacity check goes last, as it may shed queued requests.
        self._checks: tuple[Callable[[_Admission], Rejection | None], ...] = (
            self._check_identity,
            self._check_shared_frame,
            self._check_model,
            self._check_model_name,
            self._check_policy,
            self._check_budget,
            self._check_rate,
            self._check_capacity,
        )

    # -- clients -------------------------------------------------------------------------

    def on_client(self) -> None:
        # Bounded by bytes too: a burst of large messages must not keep workers' results,
        # timers and dispatch waiting (decoding a refused body walks every byte of it).
        taken = 0
        for _ in range(_BURST):
            if self._hold_reading():
                return
            try:
                frames = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._admit(frames)
            taken += sum(len(f) for f in frames)
            if taken >= _BURST_BYTES:
                return

    # implements: SR-RL-002
    def _hold_reading(self) -> bool:
        """Whether the refusals have outrun their pace: then the clients' socket leaves the
        poller until a refusal's worth of time has passed (`resume_reading`). What clients
        send meanwhile waits in their sockets, bounded by `peer_backlog` here and their own
        send limit there; a flooding client blocks in its send."""
        pace = self.refusal_pace
        if pace is None or pace.tokens >= 1.0:  # a refill only adds: no clock read per message
            return False
        now = self.node.clock()
        pace.refill(now)
        if pace.tokens >= 1.0:
            return False
        self.node.poller.unregister(self.frontend)
        self.reading_held_until = now + max(1, pace.wait_ms(0.0)) * 1_000_000
        self.counts["reads_held"] += 1
        return True

    def resume_reading(self) -> None:
        """Put the clients' socket back in the poller once the pace allows a read."""
        if self.reading_held_until is not None and self.node.clock() >= self.reading_held_until:
            self.reading_held_until = None
            self.node.poller.register(self.frontend, zmq.POLLIN)

    def _spent_on_refusal(self) -> None:
        if self.refusal_pace is not None:
            self.refusal_pace.spend()

    def on_door(self) -> None:
        """Report what the door refused or cut (its thread queues it): each as a diagnostic,
        and in a CONNECTION_REFUSED audit record at once after a quiet spell, then at most
        one an audit interval (audit records are evidence a storm must not wear out)."""
        while True:
            try:
                event = self.door.events.get_nowait()
            except queue.Empty:
                break
            code = DiagCode.MEMORY_GUARD if event.what == "cut" else DiagCode.CONNECTION_LIMIT
            self.node.diag(code, f"ingest door: {event.detail}", severity=Severity.ERROR)
            self._door_unaudited.append(f"{code} {event.detail}")
        now = self.node.clock()
        if self._door_unaudited and now >= self._door_audit_ns:
            events, self._door_unaudited = self._door_unaudited, []
            more = f" (and {len(events) - 1} more reports)" if len(events) > 1 else ""
            self.node.audit(AuditId.CONNECTION_REFUSED, f"{events[-1]}{more}")
            self._door_audit_ns = now + self.config.evidence.audit_ms * 1_000_000

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
        peer = self.identities.peer(frames[-1])
        self.door.heard_from(peer.pid)
        now = self.node.clock()
        try:
            nbytes = self.validator.check_size(frames[1:])
            incoming = self.clients.decode(frames)
        except Rejection as rejection:
            # Refused before its body is decoded; its envelope alone is read when it is small.
            envelope = self.clients.peek_envelope(frames)
            return self._refusal(identity, peer, rejection, envelope, now)
        except FrameFault as fault:
            refused = rejection_from_fault(fault)
            return self._refusal(identity, peer, refused, fault.envelope, now, fault=fault)
        envelope = incoming.envelope
        # Before validation: a copy repeats its original's timestamp, which is no fault.
        if envelope.request_id and self._repeat(identity, peer, envelope):
            return None
        trace = _ingest_trace(envelope)
        try:
            request = self.validator.check(incoming, owner=(peer.name, identity))
        except Rejection as rejection:
            body = incoming.body if isinstance(incoming.body, InferRequest) else None
            path = _path(trace, envelope, now, peer, body)
            return _Refusal(identity, peer, envelope.seq, rejection, path, body)
        deadline = Deadline.after(self._budget_ns(envelope), now)
        height, width, _ = request.image.shape
        pixels = height * width
        return _Admission(
            identity,
            peer,
            frames,
            incoming,
            request,
            trace,
            now,
            deadline,
            nbytes,
            pixels,
            cost_ns=self.service.cost_ns(pixels),
        )

    def _refusal(
        self,
        identity: bytes,
        peer: Peer,
        rejection: Rejection,
        envelope: Envelope | None,
        now: int,
        *,
        fault: FrameFault | None = None,
    ) -> _Refusal:
        """The refusal of frames whose body did not decode: in the sender's trace whenever
        its envelope was readable, else in a trace of its own (as for a request sent without
        one), so its reply and its sealed records still share an id."""
        if envelope is None:
            seq = fault.seq if fault is not None else 0
            path = RequestPath(TraceContext.new(), None, now, peer=peer.name)
            return _Refusal(identity, peer, seq, rejection, path)
        path = _path(_ingest_trace(envelope), envelope, now, peer, None)
        return _Refusal(identity, peer, envelope.seq, rejection, path)

    # implements: SR-RED-002
    def _repeat(self, identity: bytes, peer: Peer, envelope: Envelope) -> bool:
        """A copy of a request this ingest has open or answered lately (its client failed
        over and back): the open one answers the copy's sender, the answered one's answer is
        sent again. Either way it is not executed twice. False for a request not seen; only
        the peer that sent a request can repeat it (ids are scoped by peer)."""
        request_id = _scoped(peer, envelope.request_id)
        rid = self.open_ids.get(request_id)
        request = self.dispatcher.open.get(rid) if rid is not None else None
        if request is not None and request.client_seq != envelope.seq:
            # A client's id is its session and sequence number: a copy under another number
            # is no re-send but a request of its own, and the first still gets its answer.
            return False
        if request is not None:
            request.client, request.client_seq = identity, envelope.seq
            self.counts["repeats"] += 1
            return True
        answer = self.answered.get(request_id)
        if answer is None:
            return False
        env = self.clients.envelope(answer, seq=envelope.seq, trace=envelope.trace)
        self.clients.send(answer, identity=[identity], envelope=env)
        self.counts["repeats"] += 1
        return True

    def _remember(self, request: Request, answer: InferResult | ErrorReply) -> None:
        """A request was answered: forget it as open, remember its answer for a repeat."""
        self._forget_open(request)
        self.answered.keep(request.request_id, answer)

    def _forget_open(self, request: Request) -> None:
        # Only its own entry: a later request under the same id may have taken the place.
        if self.open_ids.get(request.request_id) == request.rid:
            del self.open_ids[request.request_id]

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

    def _check_identity(self, admission: _Admission) -> Rejection | None:
        """Refuse a tenant or a priority the authenticated peer may not claim."""
        envelope, peer = admission.envelope, admission.peer
        tenant = self.identities.tenant(peer, envelope.tenant)
        if tenant is None:
            return Rejection(
                DiagCode.IDENTITY_REFUSED,
                "$.tenant",
                "tenant is bound to another peer",
                code=ErrorCode.PERMISSION_DENIED,
            )
        if not self.identities.may_use(peer, envelope.priority):
            return Rejection(
                DiagCode.IDENTITY_REFUSED,
                "$.priority",
                f"priority above this peer's ceiling of {peer.max_priority}",
                code=ErrorCode.PERMISSION_DENIED,
            )
        admission.tenant = tenant
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

    def _check_model_name(self, admission: _Admission) -> Rejection | None:
        """Refuse a request naming a model that is neither the active one nor any worker's:
        it would otherwise be served, silently, by whatever model is loaded."""
        name = admission.request.model
        served = self.dispatcher.models()
        if self.model is not None:
            served.add(self.model.name)
        if not name or not served or name in served:
            return None
        return Rejection(DiagCode.UNKNOWN_MODEL, "$.model", "no worker serves this model")

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

    # implements: SR-DLN-003
    def _check_budget(self, admission: _Admission) -> Rejection | None:
        """Refuse a request whose budget is spent, or below the fastest measured service:
        it could never be met, and the miss is the client's, not the system's."""
        remaining = admission.deadline.remaining_ns(admission.received_ns)
        if remaining <= 0:
            rule = "deadline already passed"
        elif remaining < self.service.floor_ns:
            rule = f"budget below the measured service time of {self.service.floor_ns // 1000} us"
        else:
            return None
        return Rejection(
            DiagCode.DEADLINE_INFEASIBLE,
            "$.deadline_wall_ns",
            rule,
            code=ErrorCode.DEADLINE_EXCEEDED,
        )

    # implements: SR-RL-001
    def _check_rate(self, admission: _Admission) -> Rejection | None:
        """Refuse a request over its peer's or its tenant's token-bucket rate (spends tokens)."""
        priority = admission.envelope.priority
        decision = self.peer_limiter.decide(admission.peer.name, priority)
        field_path = "$"
        if decision.allowed:
            decision = self.limiter.decide(admission.tenant, priority)
            field_path = "$.tenant"
        if decision.allowed:
            return None
        return Rejection(
            DiagCode.RATE_LIMITED,
            field_path,
            "rate limit exceeded",
            code=ErrorCode.RESOURCE_EXHAUSTED,
            retry_after_ms=decision.retry_after_ms,
        )

    # implements: SR-RL-002
    def _check_capacity(self, admission: _Admission) -> Rejection | None:
        """Refuse what cannot be served before its deadline at the measured service rate, and
        what the full queue cannot take even after shedding (priority first, then fairness)."""
        priority, peer = admission.envelope.priority, admission.peer.name
        wait_ns = self._wait_ns(priority, peer, admission.cost_ns)
        remaining = admission.deadline.remaining_ns(admission.received_ns)
        if wait_ns is not None and remaining < wait_ns * self.config.admission_margin:
            return Rejection(
                DiagCode.OVERLOADED,
                "$.deadline_wall_ns",
                f"cannot be served within its budget at this load (about {wait_ns // 1_000_000}"
                " ms)",
                code=ErrorCode.RESOURCE_EXHAUSTED,
                retry_after_ms=max(1, wait_ns // 1_000_000),
            )
        if self.dispatcher.has_room(admission.nbytes):
            return None
        admission.victims = self.dispatcher.victims(priority, peer, admission.nbytes)
        if admission.victims:
            return None
        return Rejection(
            DiagCode.OVERLOADED,
            "$",
            "ingest queue is full",
            code=ErrorCode.RESOURCE_EXHAUSTED,
            retry_after_ms=max(1, (wait_ns or 0) // 1_000_000) or 100,
        )

    def _wait_ns(self, priority: int, peer: str, cost_ns: int) -> int | None:
        """When a new request would be done: the work ahead of it shared by the live
        workers, plus its own; None until a batch was measured or while no worker serves."""
        workers = self.dispatcher.live_workers()
        if not self.service.measured or not workers:
            return None
        ahead = self.dispatcher.queue.work_ahead(priority, peer, cost_ns)
        held = self.dispatcher.held_work_ns(self.service.cost_ns)
        if not ahead + held:
            return cost_ns  # it starts at once
        # The work ahead at the pipeline's measured pace, then its own.
        speed = self.service.speed(workers, self.node.clock())
        return int((ahead + held) / speed) + cost_ns

    def _accept(self, admission: _Admission) -> None:
        """Queue an admitted request for a worker and publish it."""
        for victim in admission.victims:
            self._shed(victim, "shed for a request of higher priority or a fairer share")
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
            tenant=admission.tenant,
            peer=admission.peer.name,
            cost_ns=admission.cost_ns,
            nbytes=admission.nbytes,
            pixels=admission.pixels,
            model=request.model,
            # Before anything was measured, a miss is the system's: it should serve at all.
            unpriced=self.service.measured and not self.service.knows(admission.pixels),
            parent=envelope.trace,
            admitted_ns=self.node.clock(),
            request_id=_scoped(admission.peer, envelope.request_id),
        )
        admitted = self.dispatcher.admit(pending)
        assert admitted, "the capacity check found room"
        if pending.request_id:
            self.open_ids[pending.request_id] = pending.rid
        self.validator.accept(request, owner=(admission.peer.name, admission.identity))
        self.counts["accepted"] += 1
        if self.config.publish_requests and self.node.publisher.wanted(Topic.INFER_REQUEST):
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
                tenant=admission.tenant,
            )

    # implements: SR-ERR-002, SR-LOG-003
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
        self.counts["rejected"] += 1
        self._spent_on_refusal()
        peer = refusal.peer.name
        body = self._answer(refusal.identity, peer, refusal.seq, reply, trace, publish=False)
        if self.refusals.individual(
            peer,
            rejection.code,
            rejection.diag,
            trace_id=trace.trace_id,
            field=rejection.field,
            rule=rejection.rule,
        ):
            # Sealed on its own: its error, its evidence and its diagnostic.
            self.node.publisher.publish(Topic.INFER_ERROR, reply, trace=trace)
            self.evidence.ended(
                refusal.path, reply, body, outcome=Outcome.REFUSED, model=self.model
            )
            self._seal_refusal(peer, reply, trace)

    def _shed(self, request: Request, why: str) -> None:
        """End a queued request to make room, with RESOURCE_EXHAUSTED (not a system miss)."""
        self.dispatcher.close(request.rid)
        self._forget_open(request)  # never run: a re-send may run it
        reply = ErrorReply(
            code=ErrorCode.RESOURCE_EXHAUSTED,
            message=_MESSAGES[ErrorCode.RESOURCE_EXHAUSTED],
            field="$",
            rule=why[:128],
            retry_after_ms=max(1, request.cost_ns // 1_000_000),
            diag_code=DiagCode.OVERLOADED,
            stream_id=request.stream_id,
            frame_ts_us=request.frame_ts_us,
        )
        self.counts["shed"] += 1
        self._spent_on_refusal()
        body = self._answer(
            request.client, request.peer, request.client_seq, reply, request.trace, publish=False
        )
        if self.refusals.individual(
            request.peer,
            ErrorCode.RESOURCE_EXHAUSTED,
            DiagCode.OVERLOADED,
            trace_id=request.trace.trace_id,
            field="$",
            rule=why,
        ):
            self.node.publisher.publish(Topic.INFER_ERROR, reply, trace=request.trace)
            self._ended(request, reply, body, Outcome.FAILED)
            self._seal_refusal(request.peer, reply, request.trace)

    def _seal_refusal(self, peer: str, reply: ErrorReply, trace: TraceContext) -> None:
        """One refusal's diagnostic (its audit record comes with the next summary)."""
        self.node.diag(
            DiagCode(reply.diag_code),
            f"request refused: {reply.code}",
            field=reply.field,
            rule=reply.rule,
            stream_id=reply.stream_id,
            trace=trace,
            peer=peer,
            first_trace_id=trace.trace_id,
            last_trace_id=trace.trace_id,
        )

    def _seal_aggregate(self, aggregate: Aggregate) -> None:
        """Refusals counted past the evidence rate: one diagnostic for all of them, in the
        trace of the last refusal it counts (so a trace search finds it)."""
        self.node.diag(
            aggregate.diag,
            f"{aggregate.count} requests refused: {aggregate.code}",
            field=aggregate.field,
            rule=aggregate.rule,
            trace=TraceContext(aggregate.last_trace_id, new_span_id()),
            peer=aggregate.peer,
            count=aggregate.count,
            first_trace_id=aggregate.first_trace_id,
            last_trace_id=aggregate.last_trace_id,
        )

    def _audit(self, summary: Summary) -> None:
        """The refusals since the last audit record, in one (in the last one's trace)."""
        trace = TraceContext(summary.last_trace_id, new_span_id())
        self.node.audit(AuditId.REQUEST_REJECTED, summary.describe(), trace=trace)

    def _answer(
        self,
        identity: bytes,
        peer: str,
        seq: int,
        reply: Message,
        trace: TraceContext,
        *,
        publish: bool = True,
    ) -> bytes:
        """Send `reply` to the client in its trace without blocking, and publish it (a result
        or an error) unless told not to; returns its encoded body. A reply the client has no
        room for is dropped, counted and sealed, and the client is told when it reads again.
        """
        if isinstance(reply, ErrorReply) and not reply.diag_code:
            # A diagnostic code on every error, whoever made it.
            reply = msgspec.structs.replace(reply, diag_code=_DEFAULT_DIAG[reply.code])
        body = self.clients.encode(reply)
        envelope = self.clients.envelope(reply, seq=seq, trace=trace)
        if publish:
            topic = Topic.INFER_RESULT if isinstance(reply, InferResult) else Topic.INFER_ERROR
            self.node.publisher.publish(topic, reply, trace=trace)
        if self.replies.send(identity, body, envelope) is Delivery.DROPPED:
            self._dropped(peer, seq, trace)
        return body

    def _dropped(self, peer: str, seq: int, trace: TraceContext) -> None:
        self.counts["replies_dropped"] += 1
        if self.refusals.individual(
            peer,
            ErrorCode.RESOURCE_EXHAUSTED,
            DiagCode.REPLY_DROPPED,
            trace_id=trace.trace_id,
            field="$",
            rule="client does not read its replies",
        ):
            self.node.diag(
                DiagCode.REPLY_DROPPED,
                f"reply to request {seq} dropped: peer {peer} does not read its replies",
                trace=trace,
            )

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
        body = self._answer(request.client, request.peer, request.client_seq, reply, request.trace)
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
            slot.model = body.model
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
            self.service.observe(body.infer_us, body.batch_size, request.pixels)
            self.service.completed(
                self.service.cost_ns(request.pixels),
                now,
                pending=bool(self.dispatcher.open),
            )
            if self.state is not SafetyState.NORMAL:
                body = msgspec.structs.replace(body, degraded=True)
            sent = self._answer(
                request.client, request.peer, request.client_seq, body, request.trace
            )
            self._remember(request, body)
            self.counts["answered"] += 1
            self._ended(request, body, sent, Outcome.SERVED)
        elif isinstance(body, ErrorReply):
            if body.code is ErrorCode.DEADLINE_EXCEEDED:
                body = msgspec.structs.replace(body, diag_code=_miss(request))
            sent = self._answer(
                request.client, request.peer, request.client_seq, body, request.trace
            )
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
            # Admitted with a budget the measured service could meet: a miss of the system
            # (unless its frame size had never been measured: then its budget was a guess).
            self._fail(
                request,
                ErrorCode.DEADLINE_EXCEEDED,
                _miss(request),
                "deadline exceeded before a result",
            )
        self._silent_workers(now)
        for aggregate in self.refusals.due():
            self._seal_aggregate(aggregate)
        summary = self.refusals.audit_due()
        if summary is not None:
            self._audit(summary)
        if self.replies.owed:
            self.replies.retry()
        self.on_door()

    def _silent_workers(self, now: int) -> None:
        """Move the work of workers silent for `worker_silence_ms`, or for 2.5 heartbeat
        periods (the watchdog's rule) when that is sooner: a hung worker's work moves on as
        soon as the hang is known, not a second later."""
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
        hold_ns = self.config.worker_hold_ms * 1_000_000
        service = self.service
        priced = service.knows if service.measured else None
        for slot, request in self.dispatcher.assignments(
            service.cost_ns, hold_ns, priced, now_ns=now_mono
        ):
            # What the worker holds, this request included, is done before it is: when that
            # is past its deadline, it is shed now rather than missed later.
            if request.deadline.remaining_ns(now_mono) < slot.held_work_ns(self.service.cost_ns):
                self.dispatcher.complete(slot.identity, request.rid)
                self._shed(request, "cannot finish before its deadline at this load")
                continue
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
                background=request.background,
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
        current = (
            self.limiter.allowed,
            self.limiter.refused + self.peer_limiter.refused,
            self.door.connections,
            self.door.refused,
            self.door.peak_rss >> 20,
            *self.counts.values(),
        )
        if current == self._published:
            return
        self._published = current
        detail = {key: str(value) for key, value in self.counts.items()}
        detail["rate_allowed"] = str(self.limiter.allowed)
        detail["rate_refused"] = str(self.limiter.refused + self.peer_limiter.refused)
        detail["connections"] = str(self.door.connections)
        detail["connections_refused"] = str(self.door.refused)
        detail["peak_rss_mb"] = str(self.door.peak_rss >> 20)
        detail["rss_budget_mb"] = str(self.budget_bytes >> 20)
        self.node.heartbeat_detail = detail

    def timeout_ms(self) -> float | None:
        """Until the next deadline, and at most 100 ms while work is open (worker silence is
        checked on that tick) or the timer owes something (refusals to seal, notices of
        dropped replies); once a second while clients are connected (the door's reports
        come from its own thread); else None: the loop sleeps until traffic. Never past the
        end of a hold on reading clients."""
        timeout = self._timer_ms()
        held = self.reading_held_until
        if held is None:
            return timeout
        until_read = max(0.0, (held - self.node.clock()) / 1e6)
        return until_read if timeout is None else min(timeout, until_read)

    def _timer_ms(self) -> float | None:
        deadline = self.dispatcher.next_deadline()
        if deadline is None:
            if self.refusals.pending or self.replies.owed or self._door_unaudited:
                return 100.0
            return 1000.0 if self.door.connections else None
        return max(0.0, min(100.0, deadline.remaining_ns(self.node.clock()) / 1e6))

    def drain(self) -> None:
        """On the way out: open requests get UNAVAILABLE; counted refusals are sealed."""
        for rid in list(self.dispatcher.open):
            request = self.dispatcher.close(rid)
            if request is not None:
                self._fail(
                    request, ErrorCode.UNAVAILABLE, DiagCode.WORKER_LOST, "ingest shutting down"
                )
        aggregates, summary = self.refusals.drain()
        for aggregate in aggregates:
            self._seal_aggregate(aggregate)
        if summary is not None:
            self._audit(summary)


# implements: SR-ING-004
_MESSAGES = {
    ErrorCode.INVALID_ARGUMENT: "request failed validation",
    ErrorCode.DEADLINE_EXCEEDED: "deadline exceeded",
    ErrorCode.UNAVAILABLE: "service unavailable",
    ErrorCode.RESOURCE_EXHAUSTED: "resource exhausted",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.INTERNAL: "internal error",
}

# The diagnostic code of an error whose maker named none (a worker of an older version).
_DEFAULT_DIAG = {
    ErrorCode.INVALID_ARGUMENT: DiagCode.RANGE_OR_SEQUENCE,
    ErrorCode.DEADLINE_EXCEEDED: DiagCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: DiagCode.WORKER_LOST,
    ErrorCode.RESOURCE_EXHAUSTED: DiagCode.OVERLOADED,
    ErrorCode.PERMISSION_DENIED: DiagCode.IDENTITY_REFUSED,
    ErrorCode.INTERNAL: DiagCode.INFERENCE_FAILED,
}


def _ingest_trace(envelope: Envelope) -> TraceContext:
    """The ingest's span of a request: a child of the client's, or the root of a new trace."""
    client = envelope.trace
    return client.child() if client is not None else TraceContext.new()


def _miss(request: Request) -> DiagCode:
    """The code of an admitted request's deadline miss: the system's (DIA-3002), or one whose
    frame size had never been measured when it was admitted (DIA-3004, its price a guess)."""
    return DiagCode.DEADLINE_UNPRICED if request.unpriced else DiagCode.DEADLINE_EXCEEDED


def _connection_limit(configured: int) -> int:
    """The connection limit, lowered to what the open-file limit leaves with a margin."""
    headroom = fd_headroom() - ACCEPT_MARGIN
    if headroom < 1:
        raise ValueError(
            f"the open-file limit leaves no room for client connections (needs > {ACCEPT_MARGIN}"
            " free descriptors)"
        )
    return min(configured, headroom)


def _unguarded() -> str:
    """Why the accept guard is not in this process (the door alone then holds connections
    below the open-file limit, and a storm that outruns its thread aborts the process)."""
    if any(shared_object(module) is None for module in KIND.preload):
        return "not built (a source tree run unbuilt; `pip install -e .` builds it)"
    return "built but not preloaded: started neither by the launcher nor by python -m vigil.nodes"


def _scoped(peer: Peer, request_id: bytes) -> bytes:
    """A client's request id within its authenticated peer, as this ingest keeps it and
    hands it to the workers: a repeat joins only what the same peer sent, so no peer can
    take another's answer by sending its id."""
    if not request_id:
        return b""
    return hashlib.blake2b(peer.name.encode() + b"\0" + request_id, digest_size=16).digest()


def _public_key(node: Node, key: str) -> str:
    """A binding's key as the z85 text ZAP names the peer by: the key itself, or the path of
    its certificate (relative to the launch file, as the launch file's keys are)."""
    if len(key) == 40 and "/" not in key:
        return key
    path = Path(key) if Path(key).is_absolute() else Path(node.args.launch_dir) / key
    return load_public(str(path)).decode()


def _gate_events(node: Node, endpoint: str) -> dict[str, Any]:
    """On a Curve endpoint, the door's monitor also reads the handshake failures the gate
    reports (a socket has one monitor, and the door's replaces the gate's)."""
    gate = node.gate
    if gate is None or not applies(endpoint):
        return {}
    return {
        "forward_events": REFUSAL_EVENTS,
        "forward": lambda frames: gate.on_monitor_event(endpoint, frames),
    }


def _node_keys(node: Node) -> frozenset[str]:
    """The public key this node connects with: the launch's nodes share it (or name their
    own, which a binding can then raise to the safety priority)."""
    curve = node.args.curve
    if curve is None or not curve.client_secret:
        return frozenset()
    return frozenset({load_public(curve.client_secret).decode()})


def _node_pids(node: Node) -> frozenset[int]:
    """The pids of the launch's nodes on this host, as its launcher's run graph lists them."""
    try:
        graph = node.run.read_graph()
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return frozenset()
    return frozenset(n.pid for n in graph.nodes)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie awaiting its parent's reaping does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(config: IngestConfig, args: NodeArgs) -> ExitCode:
    """Serve requests until SIGTERM/SIGINT, then answer what is still open and exit."""
    with Node(args) as node:
        try:
            ingest = _Ingest(node, config)
        except ValueError as exc:
            node.log.error("ingest.config", reason=str(exc))
            return ExitCode.CONFIG
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
            ingest.resume_reading()
            ingest.on_beats()
            ingest.on_time()
            ingest.dispatch()
            ingest.publish_counts()
            ingest.evidence.turn_ended()
        # Nothing is silently dropped on the way out: open requests get UNAVAILABLE.
        ingest.drain()
        ingest.evidence.flush()
        node.log.info("node.stopping", reason=node.stop_reason, **ingest.counts)
    return ExitCode.OK
