"""The worker node: pull requests by credit, batch them, run the model, answer each one."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import zmq

from vigil.bus.channel import Channel, FrameFault, Incoming, drain_events
from vigil.bus.clock import wall_ns
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import TraceContext
from vigil.bus.rundir import resolve_endpoint
from vigil.bus.shm import SharedFrameError, SharedFrames, pool_dir
from vigil.nodes._dedup import RecentAnswers
from vigil.nodes._logging import trace_fields
from vigil.nodes._runtime import Node
from vigil.nodes._tracing import request_spans
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.worker._background import BackgroundRunner
from vigil.nodes.worker._batcher import Batcher
from vigil.nodes.worker._contract import (
    FAULT_ABORT_STREAM,
    FAULT_HANG_STREAM,
    KIND,
    LoneRequest,
    WorkerConfig,
    backends,
)
from vigil.nodes.worker._engine import Engine
from vigil.nodes.worker._lanes import Finished, Lanes, LoneChoice, plan
from vigil.nodes.worker._models import ModelLoadError, ModelManager
from vigil.schemas import (
    BatchEvidence,
    DiagCode,
    ErrorCode,
    ErrorReply,
    InferRequest,
    InferResult,
    ModelAction,
    ModelAnnouncement,
    ModelCommand,
    ModelEvent,
    ModelStep,
    PerceptionOutput,
    Severity,
    SharedFrame,
    Topic,
    WorkerCredit,
)

__all__ = ["run"]

_BURST = 64
# How often the worker lets go of shared-memory pools whose file is gone.
_PRUNE_NS = 5_000_000_000


@dataclass(frozen=True, slots=True)
class _Asker:
    """Who asked for a job: the ingest (by backend), its id and the span for it."""

    backend: int
    rid: int
    trace: TraceContext | None


@dataclass(slots=True)
class _Job:
    rid: int
    trace: TraceContext
    request: InferRequest
    image: npt.NDArray[np.uint8]
    read_ns: int  # when the loop read it (monotonic)
    deadline: Deadline | None  # None: the ingest set none
    socket_us: int  # from the ingest's dispatch to the read
    shared: SharedFrame | None  # the client's shared-memory slot the image is read from
    parent: TraceContext | None = None  # the ingest's span of the request
    backend: int = 0  # the ingest that asked (index into the worker's backends)
    request_id: bytes = b""
    background: bool = False  # beyond its peer's fair share: runs at background priority
    # Other ingests that asked for the same request meanwhile (a client failed over): each
    # gets the one result.
    also: list[_Asker] = field(default_factory=list)

    @property
    def askers(self) -> list[_Asker]:
        """Everyone this job's answer goes to."""
        return [_Asker(self.backend, self.rid, self.trace), *self.also]


@dataclass(slots=True)
class _Batch:
    """A batch handed to a lane: its requests and the version that runs them."""

    batch_id: int
    engine: Engine
    jobs: list[_Job]
    formed_ns: int
    wide: bool
    lone: bool  # a lone request on an idle worker: its time says which way is faster

    @property
    def background(self) -> bool:
        """Run at background priority (a batch is all background or none: `_batch_kind`)."""
        return self.jobs[0].background


@dataclass(frozen=True, slots=True)
class _BatchTimes:
    """When a batch started, its inference ended and its post-processing ended (monotonic)."""

    started: int
    inferred: int
    ended: int


@dataclass(frozen=True, slots=True)
class _Ran:
    """What a lane returns: one output per frame and when the batch ran."""

    outputs: list[PerceptionOutput]
    times: _BatchTimes


class _Backend:
    """The DEALER to one ingest's backend, its channel and its connection monitor."""

    def __init__(self, node: Node, endpoint: str) -> None:
        self.dealer = node.socket(zmq.DEALER, dial=endpoint)
        self.dealer.connect(resolve_endpoint(node.run, endpoint))
        self.channel = Channel(self.dealer, source=node.args.label, instance=node.args.instance)
        node.poller.register(self.dealer, zmq.POLLIN)
        # Each new connection to the ingest (the first, or after the ingest restarted) learns
        # this worker's capacity again: a restarted ingest knows no worker until it speaks.
        self.links = node.enter(self.dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
        self.links.setsockopt(zmq.LINGER, 0)
        node.poller.register(self.links, zmq.POLLIN)


class _Worker:
    def __init__(self, node: Node, config: WorkerConfig) -> None:
        self.node = node
        self.config = config
        # One connection per ingest: a worker serves every ingest of the launch.
        self.backends = [_Backend(node, endpoint) for endpoint in backends(config)]
        self.results: RecentAnswers[InferResult] = RecentAnswers(config.dedup_window)
        self.queued: dict[bytes, _Job] = {}
        self.models = node.subscriber([Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND])
        self.manager = ModelManager(
            config.engine,
            warm=(config.warm_height, config.warm_width),
            max_batch=config.max_batch,
            event=self._event,
            budget_bytes=config.memory_budget_mb << 20,
        )
        self.max_batch = config.max_batch
        self.batcher: Batcher[_Job] = Batcher(
            max_batch=config.max_batch,
            delay_ns=config.max_queue_delay_us * 1000,
            starve_ns=config.max_starvation_us * 1000,
        )
        self.lanes: Lanes[_Ran] = node.enter(Lanes(node.ctx, config.engine.lane_count()))
        self.background = (
            node.enter(BackgroundRunner(config.background_nice)) if config.background_nice else None
        )
        node.poller.register(self.lanes.socket, zmq.POLLIN)
        self.running: dict[int, _Batch] = {}
        self.lone = _lone_choice(config)
        self.frames: SharedFrames = node.enter(SharedFrames(pool_dir(node.run.path)))
        self._next_prune = node.clock() + _PRUNE_NS
        self.batch_ids = itertools.count(1)
        self.served = 0
        # Spans, exported only where OpenTelemetry is set up.
        self.spans = node.enter(request_spans(f"vigil.{node.args.kind}"))

    # -- model ---------------------------------------------------------------------------

    def on_model(self) -> None:
        while (received := self.models.recv(0)) is not None:
            body = received.body
            if isinstance(body, ModelAnnouncement):
                self._activate(body, body.generation)
            elif isinstance(body, ModelCommand):
                self._command(body)

    def _command(self, cmd: ModelCommand) -> None:
        a = cmd.model
        if self.config.model and a.name != self.config.model:
            return
        if cmd.worker and cmd.worker != self.node.args.label:
            return
        if cmd.action is ModelAction.PREPARE:
            try:
                beside = self.manager.prepare(a, cmd.generation)
            except ModelLoadError as exc:
                self._refuse(a, exc, cmd.generation)
                return
            if beside:
                how, step = "prepared beside the serving version", ModelStep.READY
            else:
                need = self.manager.estimate(a) >> 20
                how = (
                    f"deferred: about {need} MiB does not fit beside the serving version "
                    f"({self.manager.footprint >> 20} MiB) within the memory budget"
                )
                step = ModelStep.DEFERRED
            self._event(step, a, how, cmd.generation, self.manager.loaded_footprint * beside)
        elif cmd.action is ModelAction.COMMIT:
            self._activate(a, cmd.generation)
        elif cmd.action is ModelAction.SWITCH:
            self._switch(a, cmd.generation)
        else:
            self.manager.abort(cmd.generation)

    # implements: SR-MDL-002, SR-MDL-003
    def _switch(self, a: ModelAnnouncement, generation: int) -> None:
        """This worker's step of a rolling switch: no new work while it drains and loads, and
        its known answer passes before it takes work again on the new version."""
        serving = self.manager.serving
        if serving is not None and serving.sha256 == a.sha256:
            # Serves these very bytes already (a restarted worker that a rollback reaches).
            self.manager.generation = max(self.manager.generation, generation)
            self._event(ModelStep.SWITCHED, a, "serves it already", generation)
            return
        if self.manager.engine is not None:
            self.offer(credit=0)  # withdrawn: the ingest sends its work to the other workers
        self._activate(a, generation, step=ModelStep.SWITCHED)

    def _activate(
        self, a: ModelAnnouncement, generation: int, step: ModelStep = ModelStep.COMMITTED
    ) -> None:
        if self.config.model and a.name != self.config.model:
            return
        if self.manager.serving is not None and generation <= self.manager.generation:
            return
        # Finish what is queued on the serving version first: a batch never mixes versions.
        self.flush()
        previous = self.manager.serving
        try:
            switched = self.manager.activate(a, generation)
        except ModelLoadError as exc:
            self._refuse(a, exc, generation)
            if previous is not None:
                self._restore(previous, generation)
            return
        if not switched:
            return
        engine = self.manager.engine
        assert engine is not None
        detail = f"known answer passed on {','.join(engine.providers)}" if a.kat_inputs else ""
        self._event(
            step, a, detail or ",".join(engine.providers), generation, self.manager.footprint
        )
        self._serving(a, generation)

    def _restore(self, previous: ModelAnnouncement, generation: int) -> None:
        """Serve the version that served before a failed load; it loaded once, it loads again."""
        try:
            self.manager.activate(previous, generation)
        except ModelLoadError as exc:
            self.node.diag(
                exc.code,
                f"cannot serve {previous.name} {previous.version} again: {exc.reason}",
                severity=Severity.CRITICAL,
            )
            return
        self._serving(previous, generation)

    def _serving(self, a: ModelAnnouncement, generation: int) -> None:
        # What was fast for the old version says nothing of this one.
        self.lone = _lone_choice(self.config)
        self.node.heartbeat_detail = {
            "model": a.name,
            "version": a.version,
            "generation": str(generation),
            "footprint_mb": f"{self.manager.footprint / 2**20:.1f}",
        }
        # The capacity is offered with every switch too: the offer is idempotent, and it
        # names the version now served.
        self.offer()

    # implements: SR-DLN-002
    def on_link(self, backend: _Backend) -> None:
        """A connection to an ingest completed its handshake: offer the capacity on it."""
        drain_events(backend.links)
        if self.manager.engine is not None:
            self.offer(backend=backend)

    def offer(self, credit: int | None = None, backend: _Backend | None = None) -> None:
        """Tell the ingest (every one, without `backend`) how many requests this worker
        takes at a time (its capacity; 0 while it switches versions)."""
        engine = self.manager.engine
        assert engine is not None  # offered only once a model serves
        offer = WorkerCredit(
            credit=self.config.held() if credit is None else credit,
            model=engine.name,
            version=engine.version,
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        for target in self.backends if backend is None else [backend]:
            target.channel.send(offer)

    def _event(
        self,
        step: ModelStep,
        a: ModelAnnouncement,
        detail: str,
        generation: int,
        footprint: int = 0,
    ) -> None:
        self.node.publisher.publish(
            Topic.MODEL_EVENT,
            ModelEvent(
                step=step,
                name=a.name,
                version=a.version,
                node=self.node.args.label,
                instance=self.node.args.instance,
                detail=detail[:512],
                generation=generation,
                footprint_bytes=footprint,
            ),
        )

    def _refuse(self, a: ModelAnnouncement, exc: ModelLoadError, generation: int) -> None:
        self._event(ModelStep.REFUSED, a, exc.reason, generation)
        self.node.diag(exc.code, f"{a.name} {a.version}: {exc.reason}", severity=Severity.ERROR)

    # -- requests ------------------------------------------------------------------------

    def on_requests(self, index: int) -> None:
        backend = self.backends[index]
        for _ in range(_BURST):
            try:
                frames = backend.dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            read_wall = wall_ns()  # the clock the ingest stamps its dispatch with
            try:
                incoming = backend.channel.decode(frames)
            except FrameFault as fault:
                self.node.record("error", "worker.bad_frame", what=fault.what, rule=fault.rule)
                asker = _Asker(index, fault.seq, None)
                self._error(
                    asker, ErrorCode.INTERNAL, DiagCode.MALFORMED_FRAME, "undecodable dispatch"
                )
                continue
            self._queue(index, incoming, read_wall)

    def _queue(self, index: int, incoming: Incoming, read_wall: int) -> None:
        env = incoming.envelope
        sender = env.trace
        trace = sender.child() if sender is not None else TraceContext.new()
        request = incoming.body
        if not isinstance(request, InferRequest):
            self._error(
                _Asker(index, env.seq, trace),
                ErrorCode.INTERNAL,
                DiagCode.SCHEMA_VIOLATION,
                "unexpected message",
            )
            return
        if self._repeat(_Asker(index, env.seq, trace), env.request_id):
            return
        h, w, c = request.image.shape
        if request.shm is not None:
            try:
                pixels = self.frames.frame(request.shm, h * w * c)
                image = np.frombuffer(pixels, dtype=np.uint8)  # read in place
            except SharedFrameError as exc:
                why = f"shared frame: {exc.rule}"
                asker = _Asker(index, env.seq, trace)
                self._error(asker, ErrorCode.INVALID_ARGUMENT, DiagCode.MALFORMED_FRAME, why)
                return
        else:
            buf = incoming.buffers[0].buffer
            count = h * w * c
            image = np.frombuffer(buf, dtype=np.uint8, count=count, offset=request.image.offset)
        now = self.node.clock()
        # The budget the ingest gave, counted from arrival: both its readings are of the
        # ingest's clock, so a step of the wall clock in between moves nothing.
        # implements: SR-TIM-002
        budget = env.budget_ns
        deadline = Deadline.after(budget, now) if budget is not None else None
        # The ingest stamped the dispatch as it sent it: the rest sat in this socket's buffer.
        socket_us = max(0, read_wall - env.stamp_ns) // 1000
        job = _Job(
            env.seq,
            trace,
            request,
            image.reshape(h, w, c),
            now,
            deadline,
            socket_us,
            request.shm,
            sender,
            backend=index,
            request_id=env.request_id,
            background=env.background,
        )
        # Within a priority class, work beyond a peer's fair share goes after the rest.
        self.batcher.push(job, priority=2 * env.priority + (not job.background), now_ns=now)
        if job.request_id:
            self.queued[job.request_id] = job

    # implements: SR-RED-002
    def _repeat(self, asker: _Asker, request_id: bytes) -> bool:
        """A request this worker has queued or answered lately, asked for again (through
        another ingest, after its client failed over): it joins the queued one, or gets the
        kept result; it is not run twice. False for a request not seen."""
        if not request_id:
            return False
        job = self.queued.get(request_id)
        if job is not None:
            job.also.append(asker)
            return True
        result = self.results.get(request_id)
        if result is None:
            return False
        self._send_result(asker, result)
        return True

    def timeout_ms(self) -> float | None:
        """How long the loop may sleep: until a batch is due, if a lane could take it."""
        if self.manager.engine is None or not self.lanes.idle:
            return None  # a lane that finishes wakes the loop through its socket
        wait = self.batcher.wait_ns(self.node.clock())
        return None if wait is None else wait / 1e6

    def schedule(self, now: int, *, force: bool = False) -> None:
        """Start every batch that is due on the lanes that are free (`force`: due or not)."""
        engine = self.manager.engine
        if engine is None:
            return
        while self.batcher and (force or self.batcher.due(now)):
            idle = min(self.lanes.idle, engine.lanes - self.lanes.busy)
            ready = len(self.batcher)
            lone = ready == 1 and idle == engine.lanes > 1 and engine.split_batches
            step = plan(
                ready=ready,
                idle=idle,
                lanes=engine.lanes,
                max_batch=self.max_batch,
                split=engine.split_batches,
                lone_wide=self.lone.wide() if lone else True,
            )
            if not step.sizes:
                return
            for size in step.sizes:
                jobs = self._take(engine, now, size)
                if jobs:
                    self._start(engine, jobs, now, wide=step.wide, lone=lone)

    def _take(self, engine: Engine, now: int, size: int) -> list[_Job]:
        """Up to `size` queued frames of one size; answers those that cannot run instead."""
        fixed = engine.fixed_size()
        jobs: list[_Job] = []
        for waiting in self.batcher.take(now, size, key=_batch_kind):
            job = waiting.item
            if job.deadline is not None and job.deadline.expired(now):
                # Admitted with a feasible budget, it waited too long here: a system miss.
                self._fail(
                    job, ErrorCode.DEADLINE_EXCEEDED, DiagCode.DEADLINE_EXCEEDED, "deadline passed"
                )
            elif fixed is not None and (
                job.image.shape[0] > fixed[0] or job.image.shape[1] > fixed[1]
            ):
                self._fail(
                    job,
                    ErrorCode.INVALID_ARGUMENT,
                    DiagCode.RANGE_OR_SEQUENCE,
                    f"frame larger than the model input {fixed[0]}x{fixed[1]}",
                )
            else:
                jobs.append(job)
        return jobs

    def _start(
        self, engine: Engine, jobs: list[_Job], now: int, *, wide: bool, lone: bool = False
    ) -> None:
        batch_id = next(self.batch_ids)
        if self.config.fault_injection and any(
            j.request.stream_id == FAULT_ABORT_STREAM for j in jobs
        ):
            os.abort()  # what a crash inside the inference engine looks like from outside
        if self.config.fault_injection and any(
            j.request.stream_id == FAULT_HANG_STREAM for j in jobs
        ):
            self.node.record("critical", "worker.fault_injected", fault="hang", batch=batch_id)
            # Signal handlers still run, but the loop that would act on them never turns again.
            threading.Event().wait()
        images = [j.image for j in jobs]
        stamps = [j.request.frame_ts_us for j in jobs]
        clock = self.node.clock
        background = jobs[0].background  # a batch is all background or none (`_batch_kind`)
        if background:
            # Narrow, on one core share: a background batch never takes every core, and its
            # time says nothing of how fast a lone request runs either way.
            wide, lone = False, False
        via = self.background.call if background and self.background is not None else None

        def work() -> _Ran:
            started = clock()
            raw = engine.infer_frames(images, wide=wide, via=via)
            inferred = clock()
            outputs = engine.postprocess(raw, [img.shape[:2] for img in images], stamps)
            return _Ran(outputs, _BatchTimes(started, inferred, clock()))

        tag = self.lanes.start(work, wide=wide)
        self.running[tag] = _Batch(batch_id, engine, jobs, now, wide, lone)

    def on_finished(self) -> None:
        """Answer every request of the batches the lanes finished."""
        for done in self.lanes.finished():
            self._answer(done)

    def _answer(self, done: Finished[_Ran]) -> None:
        batch = self.running.pop(done.tag)
        engine = batch.engine
        if done.result is None:
            failed = self.node.clock()
            self.node.diag(
                DiagCode.INFERENCE_FAILED,
                f"batch {batch.batch_id} failed: {type(done.error).__name__}",
                severity=Severity.ERROR,
            )
            for job in batch.jobs:
                self._fail(job, ErrorCode.INTERNAL, DiagCode.INFERENCE_FAILED, "inference failed")
            times = _BatchTimes(batch.formed_ns, failed, failed)
            self._observed(batch, times, failed=True)
            return
        ran = done.result
        times = ran.times
        if batch.lone and engine is self.manager.engine:
            self.lone.observe(wide=batch.wide, elapsed_ns=times.ended - times.started)
        infer_us = (times.ended - times.started) // 1000
        threads = engine.threads(wide=batch.wide)
        for job, output in zip(batch.jobs, ran.outputs, strict=True):
            if job.shared is not None and not self.frames.unchanged(job.shared):
                # The client reused the slot while it was read (the request had ended for
                # it): whatever was computed is not this request's answer.
                self._fail(
                    job,
                    ErrorCode.INTERNAL,
                    DiagCode.MALFORMED_FRAME,
                    "shared frame rewritten while it was read",
                )
                continue
            result = InferResult(
                stream_id=job.request.stream_id,
                frame_ts_us=job.request.frame_ts_us,
                output=output,
                model=engine.name,
                version=engine.version,
                worker=self.node.args.label,
                batch_id=batch.batch_id,
                batch_size=len(batch.jobs),
                queue_us=(batch.formed_ns - job.read_ns) // 1000,
                infer_us=infer_us,
                socket_us=job.socket_us,
                threads=threads,
            )
            self.queued.pop(job.request_id, None)
            self.results.keep(job.request_id, result)
            for asker in job.askers:
                self._send_result(asker, result)
        self.served += len(batch.jobs)
        self._observed(batch, times)

    def _observed(self, batch: _Batch, times: _BatchTimes, *, failed: bool = False) -> None:
        """Publish the batch's evidence (per-batch metrics observe it once) and its spans."""
        engine = batch.engine
        self.node.publisher.publish(
            Topic.BATCH_EVIDENCE,
            BatchEvidence(
                worker=self.node.args.label,
                model=engine.name,
                version=engine.version[:64],
                batch_id=batch.batch_id,
                size=len(batch.jobs),
                infer_us=(times.inferred - times.started) // 1000,
                postprocess_us=(times.ended - times.inferred) // 1000,
                failed=failed,
                background=batch.background,
            ),
        )
        if self.spans.enabled:
            self._record_spans(batch, times, failed=failed)

    def _record_spans(self, batch: _Batch, times: _BatchTimes, *, failed: bool) -> None:
        """A span for the batch (its own trace, linked to every request it served) and, per
        request, `worker.request` under the ingest's span with its socket-buffer wait, queue
        wait, inference and post-processing, linked back to the batch."""
        now = self.node.clock()
        to_wall = time.time_ns() - now
        spans = self.spans
        engine, jobs = batch.engine, batch.jobs
        trace = TraceContext.new()
        error = "INTERNAL" if failed else ""
        attributes = {
            "vigil.batch_id": batch.batch_id,
            "vigil.batch_size": len(jobs),
            "vigil.model": engine.name,
            "vigil.version": engine.version,
            "vigil.worker": self.node.args.label,
            "vigil.threads": engine.threads(wide=batch.wide),
            "vigil.background": batch.background,
        }
        spans.record(
            "worker.batch",
            trace,
            start_ns=times.started + to_wall,
            end_ns=times.ended + to_wall,
            attributes=attributes,
            links=[job.trace for job in jobs],
            error=error,
        )
        for job in jobs:
            spans.record(
                "worker.request",
                job.trace,
                parent=job.parent,
                start_ns=job.read_ns + to_wall,
                end_ns=now + to_wall,
                attributes={"vigil.stream_id": job.request.stream_id, **attributes},
                links=[trace],
                error=error,
                server=True,
            )
            for name, start, end in (
                ("worker.socket", job.read_ns - job.socket_us * 1000, job.read_ns),
                ("worker.queue", job.read_ns, batch.formed_ns),
                ("worker.inference", times.started, times.inferred),
                ("worker.postprocess", times.inferred, times.ended),
            ):
                spans.record(
                    name,
                    job.trace.child(),
                    parent=job.trace,
                    start_ns=start + to_wall,
                    end_ns=end + to_wall,
                    error=error if name in ("worker.inference", "worker.postprocess") else "",
                )

    def housekeeping(self, now: int) -> None:
        """Let go of shared-memory pools that were removed (now and then)."""
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_NS
            self.frames.prune()

    def flush(self) -> None:
        """Run everything queued and wait for every running batch (a switch, or the exit)."""
        while self.manager.engine is not None and (self.batcher or self.lanes.busy):
            self.schedule(self.node.clock(), force=True)
            for done in self.lanes.wait(100):
                self._answer(done)

    def _send_result(self, asker: _Asker, result: InferResult) -> None:
        channel = self.backends[asker.backend].channel
        channel.send(result, envelope=channel.envelope(result, seq=asker.rid, trace=asker.trace))

    def _fail(self, job: _Job, code: ErrorCode, diag: DiagCode, why: str) -> None:
        """End a job with an error, for everyone who asked for it."""
        self.queued.pop(job.request_id, None)
        for asker in job.askers:
            self._error(asker, code, diag, why)

    def _error(self, asker: _Asker, code: ErrorCode, diag: DiagCode, why: str) -> None:
        channel = self.backends[asker.backend].channel
        reply = ErrorReply(code=code, message=why, diag_code=diag)
        channel.send(reply, envelope=channel.envelope(reply, seq=asker.rid, trace=asker.trace))
        # A request this worker could not serve is a line in its log, in the request's trace.
        self.node.log.warning("request.error", code=str(code), why=why, **trace_fields(asker.trace))


def _lone_choice(config: WorkerConfig) -> LoneChoice:
    mode = config.engine.lone_request
    return LoneChoice(always=None if mode is LoneRequest.AUTO else mode is LoneRequest.WIDE)


def _batch_kind(job: _Job) -> tuple[tuple[int, ...], bool]:
    """What the jobs of one batch share: their frame size, and background or not."""
    return job.image.shape, job.background


def run(config: WorkerConfig, args: NodeArgs) -> ExitCode:
    """Serve batches until SIGTERM/SIGINT; what is queued is still answered before exit."""
    with Node(args) as node:
        worker = _Worker(node, config)
        node.ready(KIND.contract(config))
        while not node.stopping:
            events = node.poll(worker.timeout_ms())
            if events.get(worker.models.socket):
                worker.on_model()
            for index, backend in enumerate(worker.backends):
                if events.get(backend.links):
                    worker.on_link(backend)
                if events.get(backend.dealer):
                    worker.on_requests(index)
            if events.get(worker.lanes.socket):
                worker.on_finished()
            worker.schedule(node.clock())
            worker.housekeeping(node.clock())
        worker.flush()
        node.log.info("node.stopping", reason=node.stop_reason, served=worker.served)
    return ExitCode.OK
