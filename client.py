"""Clients of the ingest: send a frame, get its perception result or a typed error.

A client connects to every ingest it is given and fails over between them (`bus.failover`):
it sends to one, and when that one dies or falls silent it re-sends what it had not answered
to the next at once. Every request carries a client-unique id (this client's random session
and its sequence number) that stays the same on every re-send, so the pipeline executes and
answers it at most once; the client delivers exactly one outcome per request.

Frames for the ingests on this host go through the client's shared-memory pool (`bus.shm`):
only a descriptor travels, a re-send to another of them names the same slot, and the slot is
lent until the request has ended for the client. A link to an ingest elsewhere carries the
pixels themselves.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import msgspec
import numpy as np
import numpy.typing as npt
import zmq
import zmq.asyncio

from vigil.bus.channel import Channel, FrameFault
from vigil.bus.clock import wall_ns
from vigil.bus.closing import Closing
from vigil.bus.curve import CurveConfig, secure
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.failover import LINK_EVENTS, Failover, Outstanding, configure_link, link_change
from vigil.bus.shm import FramePool, ensure_pool_dir
from vigil.errors import (
    DeadlineExceeded,
    InternalError,
    RequestError,
    ResourceExhausted,
    Unavailable,
    error_from_reply,
)
from vigil.schemas import (
    ErrorCode,
    ErrorReply,
    InferRequest,
    InferResult,
    RepliesDropped,
    SharedFrame,
    TensorRef,
)
from vigil.schemas.infer import MAX_FRAME_BYTES

__all__ = ["Answer", "AsyncClient", "Client", "Reply"]

Reply = tuple[int, InferResult | RequestError]

# How long past its deadline a client waits for the ingest's own DEADLINE_EXCEEDED before it
# gives up locally: the ingest answers at the deadline, this only covers a lost answer.
_GRACE_NS = 500_000_000
# Requests that may wait for an ingest to come up (the bound a DEALER's queue used to be).
_MAX_WAITING = 1000
# How long the first request waits for the first connection at most (see `_first_link`).
_FIRST_LINK_S = 1.0
_ENVELOPE = msgspec.msgpack.Decoder(Envelope)


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply as the client received it: the request id, how the request ended, and the
    envelope it came in (None for an outcome the client made itself, such as a local
    deadline)."""

    seq: int
    outcome: InferResult | RequestError
    envelope: Envelope | None = None

    @property
    def trace(self) -> TraceContext | None:
        """The trace the pipeline answered in: the request's trace id, the ingest's span."""
        return self.envelope.trace if self.envelope is not None else None

    def result(self) -> InferResult:
        """The result; raises the typed error the request ended with instead."""
        if isinstance(self.outcome, RequestError):
            raise self.outcome
        return self.outcome


def _answer(seq: int, body: object, envelope: Envelope) -> Answer:
    """A decoded reply as the result or the typed error it stands for, in its trace."""
    if isinstance(body, InferResult):
        return Answer(seq, body, envelope)
    trace = envelope.trace
    traceparent = trace.traceparent if trace is not None else ""
    if isinstance(body, ErrorReply):
        return Answer(seq, error_from_reply(body, traceparent), envelope)
    reply = ErrorReply(code=ErrorCode.INTERNAL, message="unexpected reply")
    return Answer(seq, InternalError(reply, traceparent), envelope)


def _dropped(notice: RepliesDropped, envelope: Envelope) -> list[Answer]:
    """The answers of the requests whose replies the ingest dropped while we did not read."""
    reply = ErrorReply(
        code=ErrorCode.RESOURCE_EXHAUSTED,
        message=f"the ingest dropped {notice.count} replies this client did not read",
        diag_code=notice.diag_code,
    )
    return [Answer(seq, ResourceExhausted(reply), envelope) for seq in notice.seqs]


def _deadline(deadline_s: float) -> tuple[Deadline, int]:
    """A request's deadline `deadline_s` from now, and its wall-clock time for the envelope."""
    now_wall, now_mono = wall_ns(), time.monotonic_ns()
    deadline = Deadline.after(int(deadline_s * 1e9), now_mono)
    return deadline, deadline.to_wall_ns(now_wall_ns=now_wall, now_mono_ns=now_mono)


def _endpoints(endpoint: str | Sequence[str]) -> list[str]:
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not endpoints:
        raise ValueError("a client needs at least one ingest endpoint")
    return endpoints


def _request_id(session: int, seq: int) -> bytes:
    return session.to_bytes(8, "big") + seq.to_bytes(8, "big")


class _SharedSlots(Closing):
    """The client's shared-memory pool, for the ingests on this host: frames go into its
    slots and only descriptors travel, on the links that can read the pool (`ipc://`
    endpoints in one run directory). Each slot is lent to one request and given back once
    that request has ended for the client, however many ingests it went to.

    When every slot is lent, or a frame is larger than a slot, or the pool cannot be made,
    the frame travels as a buffer instead: a request never waits for a slot.
    """

    def __init__(self, endpoints: list[str], enabled: bool | None, slots: int) -> None:
        local = [
            Path(e[len("ipc://") :]).parent if e.startswith("ipc://") else None for e in endpoints
        ]
        self._run_dir = next((d for d in local if d is not None), None)
        if enabled is False:
            self._run_dir = None
        # Which links reach an ingest that reads this pool; the others get the pixels.
        self.links = [d is not None and d == self._run_dir for d in local]
        self._slots = slots
        self.pool: FramePool | None = None

    def place(self, frame: npt.NDArray[np.uint8]) -> tuple[int, SharedFrame] | None:
        """A slot holding `frame` and its descriptor, or None to send the frame itself."""
        pool = self.pool if self.pool is not None else self._open()
        if pool is None or frame.nbytes > pool.slot_bytes:
            return None
        slot = pool.acquire()
        if slot is None:
            return None
        return slot, pool.put(slot, frame.data)

    def _open(self) -> FramePool | None:
        if self._run_dir is None or not self._run_dir.is_dir():
            return None  # remote, or the run has not started yet: frames go as buffers
        try:
            directory = ensure_pool_dir(self._run_dir)
            self.pool = FramePool(directory, slots=self._slots, slot_bytes=MAX_FRAME_BYTES)
        except OSError:
            self._run_dir = None  # no shared memory here: buffers from now on
            return None
        return self.pool

    def give_back(self, request: Outstanding) -> None:
        """`request` ended for the client: its slot (if it had one) is free again."""
        if request.slot is not None and self.pool is not None:
            self.pool.release(request.slot)

    def parts(
        self, channel: Channel, image: npt.NDArray[np.uint8], request: InferRequest
    ) -> tuple[list[bytes | memoryview], Callable[[], list[bytes | memoryview]] | None, int | None]:
        """The body and buffer frames of a request; for a frame placed in a slot, how to make
        the frames carrying its pixels (for a link that cannot read the pool), and the slot."""
        placed = self.place(image) if image.dtype == np.uint8 else None
        if placed is None:
            # The frame's pixels go out without a copy (and stay referenced for a re-send).
            return [channel.encode(request), image.reshape(-1).data], None, None
        slot, shared = placed
        pool = self.pool
        assert pool is not None  # placed in it

        def inline() -> list[bytes | memoryview]:
            # Copied from the slot, which stays the request's until it ends: the caller may
            # have reused its own array since.
            return [channel.encode(request), pool.copy(slot, image.nbytes)]

        body = msgspec.structs.replace(request, shm=shared)
        return [channel.encode(body)], inline, slot

    def close(self) -> None:
        """Remove the pool."""
        if self.pool is not None:
            self.pool.close()


def _request(
    channel: Channel,
    frame: npt.NDArray[np.uint8],
    *,
    stream_id: str,
    frame_ts_us: int,
    deadline_wall_ns: int,
    trace: TraceContext | None,
    priority: int,
    tenant: str,
    model: str,
) -> tuple[npt.NDArray[np.uint8], InferRequest, Envelope]:
    """The contiguous image, the request that describes it and its envelope (both clients)."""
    image = np.ascontiguousarray(frame)
    request = InferRequest(
        stream_id=stream_id,
        frame_ts_us=frame_ts_us,
        image=TensorRef(dtype=str(image.dtype), shape=image.shape),  # type: ignore[arg-type]
        model=model,
    )
    seq = channel.next_seq()
    envelope = channel.envelope(
        request,
        seq=seq,
        trace=trace or TraceContext.new(),
        deadline_wall_ns=deadline_wall_ns,
        priority=priority,
        tenant=tenant,
        request_id=_request_id(channel.session, seq),
    )
    return image, request, envelope


# implements: SR-ERR-001
def _unreachable() -> Unavailable:
    # Requests wait for an ingest to come up, but only so many: waiting without a bound
    # would hang the caller's memory instead of its thread. The request ends here, typed.
    reply = ErrorReply(
        code=ErrorCode.UNAVAILABLE,
        message="no ingest takes the request: none connected (refused?) or too many waiting",
    )
    return Unavailable(reply)


def _never_sent() -> Unavailable:
    return Unavailable(
        ErrorReply(code=ErrorCode.UNAVAILABLE, message="no ingest reachable before the deadline")
    )


def _no_reply() -> DeadlineExceeded:
    return DeadlineExceeded(
        ErrorReply(code=ErrorCode.DEADLINE_EXCEEDED, message="no reply from the ingest")
    )


class _Links:
    """One DEALER per ingest (a link) and its monitor, owned by the client's ExitStack."""

    def __init__(
        self,
        stack: ExitStack,
        ctx: zmq.Context[Any],
        endpoints: list[str],
        curve: CurveConfig | None,
    ) -> None:
        self.endpoints = endpoints
        self.sockets: list[Any] = []  # zmq.Socket, or zmq.asyncio.Socket for AsyncClient
        self.monitors: list[Any] = []
        for endpoint in endpoints:
            sock = stack.enter_context(ctx.socket(zmq.DEALER))
            configure_link(sock)
            secure(sock, endpoint, curve, "client")
            monitor = stack.enter_context(sock.get_monitor_socket(LINK_EVENTS))
            monitor.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self.sockets.append(sock)
            self.monitors.append(monitor)

    def send(
        self,
        channel: Channel,
        failover: Failover,
        request: Outstanding,
        link: int,
        *,
        shared: bool,
    ) -> bool:
        """Send (or re-send, stamped anew) `request` on `link` without ever blocking; False
        if the link cannot take it now. `shared`: the link's ingest reads the client's
        shared memory, so a frame there goes as its descriptor; else as its pixels."""
        envelope = channel.restamp(request.envelope) if request.sends else request.envelope
        parts = request.parts if shared or request.inline is None else request.inline()
        frames = [channel.encode(envelope), *parts]
        try:
            sent = self.sockets[link].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        # An asyncio socket raises nothing here: it returns a future, already done with
        # NOBLOCK, that holds zmq.Again when the link could not take the frames.
        if isinstance(sent, asyncio.Future) and sent.done():
            error = sent.exception()
            if isinstance(error, zmq.Again):
                return False
            if error is not None:
                raise error
        failover.sent(request, link)
        return True


class Client(Closing):
    """A synchronous client: `infer()` for one request, `submit()`/`poll()` for many in flight.

    Every request ends: with its result, with the typed error the ingest sent, with a local
    Unavailable when no ingest could be reached by its deadline, or with a local
    DeadlineExceeded when an ingest took it and no answer came by deadline plus grace.
    `endpoint` is one ingest frontend or several (in order of preference). Register the
    client's sockets in a poller with `register`, then call `poll` when they are ready.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        name: str = "client",
        tenant: str = "",
        priority: int = 0,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: CurveConfig | None = None,
        shared_memory: bool | None = None,
        pool_slots: int = 16,
    ) -> None:
        self._stack = ExitStack()
        endpoints = _endpoints(endpoint)
        # Frames for a same-host ingest go through shared memory (None: whenever possible).
        self.slots = self._stack.enter_context(_SharedSlots(endpoints, shared_memory, pool_slots))
        if ctx is None:
            ctx = self._stack.enter_context(zmq.Context())
        self._links = _Links(self._stack, ctx, endpoints, curve)
        self.channel = Channel(self._links.sockets[0], source=name, session=secrets.randbits(63))
        self.failover = Failover(
            len(self._links.sockets), max_waiting=_MAX_WAITING, ended=self.slots.give_back
        )
        self.tenant = tenant
        self.priority = priority
        self._connected = False  # whether a link was ever up (or waited for once)
        self._raw: set[int] = set()  # ids of frames sent raw (`send_frames`) awaiting replies
        # Requests whose replies the ingest dropped, not yet handed to the caller.
        self._dropped: list[Answer] = []
        self._poller = zmq.Poller()
        self.register(self._poller)

    def register(self, poller: zmq.Poller) -> None:
        """Add every socket of this client (links and their monitors) to `poller`."""
        for sock in (*self._links.sockets, *self._links.monitors):
            poller.register(sock, zmq.POLLIN)

    def owns(self, events: dict[Any, int]) -> bool:
        """Whether a poll's `events` include one of this client's sockets."""
        return any(events.get(s) for s in (*self._links.sockets, *self._links.monitors))

    def submit(
        self,
        frame: npt.NDArray[np.uint8],
        *,
        stream_id: str,
        frame_ts_us: int,
        deadline_s: float = 2.0,
        trace: TraceContext | None = None,
        priority: int | None = None,
        model: str = "",
    ) -> int:
        """Send one uint8 HWC frame; returns the request id that its reply will carry."""
        deadline, deadline_wall_ns = _deadline(deadline_s)
        image, request, envelope = _request(
            self.channel,
            frame,
            stream_id=stream_id,
            frame_ts_us=frame_ts_us,
            deadline_wall_ns=deadline_wall_ns,
            trace=trace,
            priority=self.priority if priority is None else priority,
            tenant=self.tenant,
            model=model,
        )
        parts, inline, slot = self.slots.parts(self.channel, image, request)
        give_up = deadline.later(_GRACE_NS)
        self._launch(
            Outstanding(envelope.seq, envelope, parts, deadline, give_up, inline=inline, slot=slot)
        )
        return envelope.seq

    def submit_raw(self, body: bytes, buffers: list[bytes], *, deadline_s: float = 2.0) -> int:
        """Send a well-formed envelope with arbitrary body and buffer bytes; returns its id.

        For sources and tests that must show how the pipeline answers broken input.
        """
        deadline, deadline_wall_ns = _deadline(deadline_s)
        seq = self.channel.next_seq()
        envelope = self.channel.envelope(
            InferRequest,
            seq=seq,
            deadline_wall_ns=deadline_wall_ns,
            tenant=self.tenant,
            request_id=_request_id(self.channel.session, seq),
        )
        self._launch(
            Outstanding(seq, envelope, [body, *buffers], deadline, deadline.later(_GRACE_NS))
        )
        return seq

    def send_frames(self, frames: list[bytes]) -> None:
        """Send raw frames as they are, never re-sent (for tests that speak for a broken
        client); a reply to them comes through `poll` by the envelope's id."""
        if self.failover.choose() is None and not self._connected:
            self._first_link(Deadline.after(int(_FIRST_LINK_S * 1e9), time.monotonic_ns()))
        link = self.failover.choose()
        sock = self._links.sockets[link if link is not None else 0]
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            raise _unreachable() from None
        with suppress(msgspec.DecodeError, msgspec.ValidationError, IndexError):
            self._raw.add(_ENVELOPE.decode(frames[0]).seq)

    # implements: SR-ERR-001
    def _launch(self, request: Outstanding) -> None:
        """Send a new request on the current link, or let it wait for one (bounded)."""
        if self.failover.choose() is None and not self._connected:
            self._first_link(request.deadline)
        link = self.failover.choose()
        if (link is None or not self._send(request, link)) and not self.failover.has_room():
            self.slots.give_back(request)  # never tracked: it ends here
            raise _unreachable()
        self.failover.add(request)

    def _first_link(self, deadline: Deadline) -> None:
        """Wait until a first link is up, at most `_FIRST_LINK_S` and never past `deadline`.

        Requests that wait for a link go out when `poll` sees one come up; a caller that sends
        right after connecting and then waits elsewhere (a log, another socket) would wait in
        vain. So, once only, the first send waits for the connection to be made.
        """
        self._connected = True  # waited once: from now on requests wait for `poll`
        until = min(deadline.due_mono_ns, time.monotonic_ns() + int(_FIRST_LINK_S * 1e9))
        monitors = zmq.Poller()
        for monitor in self._links.monitors:
            monitors.register(monitor, zmq.POLLIN)
        while self.failover.choose() is None:
            left_ms = (until - time.monotonic_ns()) / 1e6
            if left_ms <= 0:
                return
            self._on_links(dict(monitors.poll(math.ceil(left_ms))))

    def _send(self, request: Outstanding, link: int) -> bool:
        shared = self.slots.links[link]
        return self._links.send(self.channel, self.failover, request, link, shared=shared)

    def _on_links(self, events: dict[Any, int]) -> None:
        """Follow the links' monitors: re-send at once what a lost link held."""
        for link, monitor in enumerate(self._links.monitors):
            if not events.get(monitor):
                continue
            while True:
                try:
                    change = link_change(monitor.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if change is None:
                    continue
                self._connected = self._connected or change
                ready = self.failover.went_up(link) if change else self.failover.went_down(link)
                target = self.failover.choose()
                for request in ready:
                    if target is None or not self._send(request, target):
                        break

    @property
    def in_flight(self) -> int:
        """Requests sent (or waiting to be) and not yet answered."""
        return len(self.failover.requests)

    @property
    def links_up(self) -> list[bool]:
        """Which ingests this client is connected to now."""
        return list(self.failover.up)

    def poll(self, timeout_ms: float) -> Reply | None:
        """The next reply within `timeout_ms`, or a locally ended request, or None."""
        answer = self.poll_answer(timeout_ms)
        return None if answer is None else (answer.seq, answer.outcome)

    def poll_answer(self, timeout_ms: float) -> Answer | None:
        """Like `poll`, with the envelope the reply came in (and so its trace)."""
        until = time.monotonic_ns() + int(timeout_ms * 1e6)
        while True:
            if self._dropped:
                return self._dropped.pop()
            expired = self._expired()
            if expired is not None:
                return expired
            now = time.monotonic_ns()
            wait = max(0.0, (until - now) / 1e6)
            due = self.failover.next_expiry()
            if due is not None:
                wait = min(wait, max(0.0, due.remaining_ns(now) / 1e6))
            events = dict(self._poller.poll(math.ceil(wait)))
            self._on_links(events)
            for sock in self._links.sockets:
                answer = self._read(sock) if events.get(sock) else None
                if answer is not None:
                    return answer
            if time.monotonic_ns() >= until:
                return self._expired()

    def _read(self, sock: zmq.Socket[Any]) -> Answer | None:
        """The first reply on `sock` for a request still open (repeats are dropped)."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            try:
                incoming = self.channel.decode(frames)
            except FrameFault as fault:
                if self.failover.done(fault.seq) is None and not self._raw_reply(fault.seq):
                    continue
                reply = ErrorReply(code=ErrorCode.INTERNAL, message="undecodable reply")
                return Answer(fault.seq, InternalError(reply), fault.envelope)
            if isinstance(incoming.body, RepliesDropped):
                # The ingest had no room for these replies while we did not read: they end now.
                ended = _dropped(incoming.body, incoming.envelope)
                self._dropped.extend(a for a in ended if self.failover.done(a.seq) is not None)
                if self._dropped:
                    return self._dropped.pop()
                continue
            seq = incoming.envelope.seq
            # A second answer (from the ingest a request was re-sent away from) is dropped.
            if self.failover.done(seq) is not None or self._raw_reply(seq):
                return _answer(seq, incoming.body, incoming.envelope)

    def _raw_reply(self, seq: int) -> bool:
        if seq in self._raw:
            self._raw.discard(seq)
            return True
        return False

    def _expired(self) -> Answer | None:
        ended = self.failover.expired(time.monotonic_ns())
        if ended is None:
            return None
        request, sent = ended
        return Answer(request.seq, _no_reply() if sent else _never_sent())

    def infer(
        self,
        frame: npt.NDArray[np.uint8],
        *,
        stream_id: str,
        frame_ts_us: int,
        deadline_s: float = 2.0,
        trace: TraceContext | None = None,
        priority: int | None = None,
    ) -> InferResult:
        """Run one frame through the pipeline; raises the typed error it ended with."""
        return self.infer_answer(
            frame,
            stream_id=stream_id,
            frame_ts_us=frame_ts_us,
            deadline_s=deadline_s,
            trace=trace,
            priority=priority,
        ).result()

    def infer_answer(
        self,
        frame: npt.NDArray[np.uint8],
        *,
        stream_id: str,
        frame_ts_us: int,
        deadline_s: float = 2.0,
        trace: TraceContext | None = None,
        priority: int | None = None,
    ) -> Answer:
        """Run one frame through the pipeline; its answer (result or typed error) with the
        envelope it came in, whose trace is the request's."""
        try:
            seq = self.submit(
                frame,
                stream_id=stream_id,
                frame_ts_us=frame_ts_us,
                deadline_s=deadline_s,
                trace=trace,
                priority=priority,
            )
        except Unavailable as refused:  # never sent: no id, no reply to wait for
            return Answer(0, refused)
        while True:
            answer = self.poll_answer(deadline_s * 1000 + _GRACE_NS / 1e6)
            # Another id is a straggler of an earlier submit(); this call owns only its own.
            if answer is not None and answer.seq == seq:
                return answer

    def close(self) -> None:
        """Close the sockets (and the context, when this client made it)."""
        self._stack.close()


class AsyncClient:
    """An asyncio client: any number of `await infer()` in flight, failing over like `Client`.

    One reader task per link receives replies and resolves the waiting request by its
    envelope sequence number; one monitor task per link re-sends what a lost link held. Every
    request ends: with its result, the typed error the ingest sent, a local Unavailable when
    no ingest was reachable by its deadline, or a local DeadlineExceeded when nothing came
    back by deadline plus grace. Use as `async with AsyncClient(endpoint) as client:`; leaving
    it closes the sockets (and the context, when this client made it) and fails whatever is
    still waiting.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        name: str = "client",
        tenant: str = "",
        priority: int = 0,
        ctx: zmq.asyncio.Context | None = None,
        curve: CurveConfig | None = None,
        shared_memory: bool | None = None,
        pool_slots: int = 16,
    ) -> None:
        self._stack = ExitStack()
        endpoints = _endpoints(endpoint)
        # Frames for a same-host ingest go through shared memory (None: whenever possible).
        self.slots = self._stack.enter_context(_SharedSlots(endpoints, shared_memory, pool_slots))
        if ctx is None:
            ctx = self._stack.enter_context(zmq.asyncio.Context())
        self._links = _Links(self._stack, ctx, endpoints, curve)
        # The channel only numbers, encodes and decodes here; every send and receive goes
        # through the awaitable sockets themselves.
        self.channel = Channel(
            cast("zmq.Socket[bytes]", self._links.sockets[0]),
            source=name,
            session=secrets.randbits(63),
        )
        self.failover = Failover(
            len(self._links.sockets), max_waiting=_MAX_WAITING, ended=self.slots.give_back
        )
        self.tenant = tenant
        self.priority = priority
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Requests sent (or waiting to be) and not yet answered."""
        return len(self._waiting)

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        for link, sock in enumerate(self._links.sockets):
            self._tasks.append(loop.create_task(self._read(sock), name=f"vigil-client-read-{link}"))
            self._tasks.append(
                loop.create_task(self._follow(link), name=f"vigil-client-link-{link}")
            )

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                incoming = self.channel.decode(frames)
            except FrameFault as fault:
                reply = ErrorReply(code=ErrorCode.INTERNAL, message="undecodable reply")
                answer = Answer(fault.seq, InternalError(reply), fault.envelope)
            else:
                if isinstance(incoming.body, RepliesDropped):
                    for dropped in _dropped(incoming.body, incoming.envelope):
                        self._end(dropped)
                    continue
                answer = _answer(incoming.envelope.seq, incoming.body, incoming.envelope)
            self._end(answer)

    def _end(self, answer: Answer) -> None:
        """Hand an answer to the request waiting for it, if one still does."""
        self.failover.done(answer.seq)
        waiter = self._waiting.get(answer.seq)
        # A reply for a request that already ended (local deadline, cancelled, answered
        # by the other ingest) is a straggler: there is nobody left to tell.
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    async def _follow(self, link: int) -> None:
        monitor = self._links.monitors[link]
        while True:
            change = link_change(await monitor.recv_multipart())
            if change is None:
                continue
            ready = self.failover.went_up(link) if change else self.failover.went_down(link)
            target = self.failover.choose()
            for request in ready:
                if target is None or not self._send(request, target):
                    break

    def _send(self, request: Outstanding, link: int) -> bool:
        shared = self.slots.links[link]
        return self._links.send(self.channel, self.failover, request, link, shared=shared)

    async def infer(
        self,
        frame: npt.NDArray[np.uint8],
        *,
        stream_id: str,
        frame_ts_us: int,
        deadline_s: float = 2.0,
        priority: int | None = None,
        trace: TraceContext | None = None,
        model: str = "",
    ) -> InferResult:
        """Run one uint8 HWC frame through the pipeline; raises the typed error it ended with."""
        answer = await self.infer_answer(
            frame,
            stream_id=stream_id,
            frame_ts_us=frame_ts_us,
            deadline_s=deadline_s,
            priority=priority,
            trace=trace,
            model=model,
        )
        return answer.result()

    async def infer_answer(
        self,
        frame: npt.NDArray[np.uint8],
        *,
        stream_id: str,
        frame_ts_us: int,
        deadline_s: float = 2.0,
        priority: int | None = None,
        trace: TraceContext | None = None,
        model: str = "",
    ) -> Answer:
        """Run one uint8 HWC frame through the pipeline; its answer (result or typed error)
        with the envelope it came in, whose trace is the request's."""
        self._start()
        deadline, deadline_wall_ns = _deadline(deadline_s)
        image, request, envelope = _request(
            self.channel,
            frame,
            stream_id=stream_id,
            frame_ts_us=frame_ts_us,
            deadline_wall_ns=deadline_wall_ns,
            trace=trace,
            priority=self.priority if priority is None else priority,
            tenant=self.tenant,
            model=model,
        )
        parts, inline, slot = self.slots.parts(self.channel, image, request)
        outstanding = Outstanding(
            envelope.seq,
            envelope,
            parts,
            deadline,
            deadline.later(_GRACE_NS),
            inline=inline,
            slot=slot,
        )
        link = self.failover.choose()
        if (link is None or not self._send(outstanding, link)) and not self.failover.has_room():
            self.slots.give_back(outstanding)  # never tracked: it ends here
            return Answer(envelope.seq, _unreachable())
        self.failover.add(outstanding)
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[envelope.seq] = waiter
        try:
            return await self._answer(waiter, outstanding)
        finally:
            self._waiting.pop(envelope.seq, None)
            self.failover.done(envelope.seq)

    async def _answer(self, waiter: asyncio.Future[Answer], request: Outstanding) -> Answer:
        """The reply, or the local end: Unavailable at the deadline if it never left,
        DeadlineExceeded at the deadline plus grace if it did."""
        # Shielded: a timeout ends the wait, not the waiter, which the second wait reuses.
        with suppress(TimeoutError):
            return await asyncio.wait_for(
                asyncio.shield(waiter), request.deadline.remaining_ns(time.monotonic_ns()) / 1e9
            )
        if request.link is None:
            return Answer(request.seq, _never_sent())
        with suppress(TimeoutError):
            return await asyncio.wait_for(
                asyncio.shield(waiter), request.give_up.remaining_ns(time.monotonic_ns()) / 1e9
            )
        return Answer(request.seq, _no_reply())

    async def close(self) -> None:
        """Stop the tasks, fail what still waits, close the sockets (and own context)."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        waiting, self._waiting = self._waiting, {}
        for seq, waiter in waiting.items():
            if not waiter.done():
                reply = ErrorReply(code=ErrorCode.UNAVAILABLE, message="client closed")
                waiter.set_result(Answer(seq, Unavailable(reply)))
        self._stack.close()

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
