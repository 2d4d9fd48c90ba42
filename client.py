"""Clients of the ingest: send a frame, get its perception result or a typed error."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Self, cast

import numpy as np
import numpy.typing as npt
import zmq
import zmq.asyncio

from vigil.bus.channel import Channel, FrameFault
from vigil.bus.closing import Closing
from vigil.bus.curve import CurveConfig, secure
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope, TraceContext
from vigil.errors import (
    DeadlineExceeded,
    InternalError,
    RequestError,
    Unavailable,
    error_from_reply,
)
from vigil.schemas import ErrorCode, ErrorReply, InferRequest, InferResult, TensorRef

__all__ = ["Answer", "AsyncClient", "Client", "Reply"]

Reply = tuple[int, InferResult | RequestError]


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


# How long past its deadline a client waits for the ingest's own DEADLINE_EXCEEDED before it
# gives up locally: the ingest answers at the deadline, this only covers a dead ingest.
_GRACE_NS = 500_000_000


def _deadline(deadline_s: float) -> tuple[Deadline, int]:
    """A request's deadline `deadline_s` from now, and its wall-clock time for the envelope."""
    now_wall, now_mono = time.time_ns(), time.monotonic_ns()
    deadline = Deadline.after(int(deadline_s * 1e9), now_mono)
    return deadline, deadline.to_wall_ns(now_wall_ns=now_wall, now_mono_ns=now_mono)


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
    envelope = channel.envelope(
        request,
        trace=trace or TraceContext.new(),
        deadline_wall_ns=deadline_wall_ns,
        priority=priority,
        tenant=tenant,
    )
    return image, request, envelope


# implements: SR-ERR-001
def _unreachable() -> Unavailable:
    # A DEALER queues requests while its connection is being made; it refuses them only when
    # it has no connection left at all (the ingest refused this client's key) or its queue is
    # full. Waiting then would hang the caller, so the request ends here, typed.
    reply = ErrorReply(
        code=ErrorCode.UNAVAILABLE,
        message="the ingest takes no request: no connection (refused?) or the send queue is full",
    )
    return Unavailable(reply)


class Client(Closing):
    """A synchronous client: `infer()` for one request, `submit()`/`poll()` for many in flight.

    Every request ends: with its result, with the typed error the ingest sent, or — if the
    ingest itself is gone — with a local DeadlineExceeded shortly after the deadline.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        name: str = "client",
        tenant: str = "",
        priority: int = 0,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        self._stack = ExitStack()
        if ctx is None:
            ctx = self._stack.enter_context(zmq.Context())
        self.socket: zmq.Socket[bytes] = self._stack.enter_context(ctx.socket(zmq.DEALER))
        self.socket.setsockopt(zmq.LINGER, 0)
        secure(self.socket, endpoint, curve, "client")
        self.socket.connect(endpoint)
        self.channel = Channel(self.socket, source=name)
        self.tenant = tenant
        self.priority = priority
        # When each request in flight is given up locally: its deadline plus a grace period.
        self._deadlines: dict[int, Deadline] = {}

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
        self._send(
            [self.channel.encode(envelope), self.channel.encode(request), image.reshape(-1).data],
            copy=False,  # the frame's pixels go out without a copy
        )
        self._deadlines[envelope.seq] = deadline.later(_GRACE_NS)
        return envelope.seq

    def submit_raw(self, body: bytes, buffers: list[bytes], *, deadline_s: float = 2.0) -> int:
        """Send a well-formed envelope with arbitrary body and buffer bytes; returns its id.

        For sources and tests that must show how the pipeline answers broken input.
        """
        deadline, deadline_wall_ns = _deadline(deadline_s)
        envelope = self.channel.envelope(
            InferRequest, deadline_wall_ns=deadline_wall_ns, tenant=self.tenant
        )
        self._send([self.channel.encode(envelope), body, *buffers])
        self._deadlines[envelope.seq] = deadline.later(_GRACE_NS)
        return envelope.seq

    def send_frames(self, frames: list[bytes]) -> None:
        """Send raw frames as they are (for tests that speak for a broken client)."""
        self._send(frames)

    # implements: SR-ERR-001
    def _send(self, frames: Sequence[bytes | memoryview], *, copy: bool = True) -> None:
        """Send without ever blocking; Unavailable when the ingest cannot take the request."""
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            raise _unreachable() from None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._deadlines)

    def poll(self, timeout_ms: float) -> Reply | None:
        """The next reply within `timeout_ms`, or a local deadline error, or None."""
        answer = self.poll_answer(timeout_ms)
        return None if answer is None else (answer.seq, answer.outcome)

    def poll_answer(self, timeout_ms: float) -> Answer | None:
        """Like `poll`, with the envelope the reply came in (and so its trace)."""
        expired = self._expired()
        if expired is not None:
            return expired
        wait = timeout_ms
        if self._deadlines:
            left_ns = min(self._deadlines.values()).remaining_ns(time.monotonic_ns())
            wait = min(wait, max(0.0, left_ns / 1e6))
        if not self.socket.poll(math.ceil(wait)):
            return self._expired()
        try:
            incoming = self.channel.recv()
        except FrameFault as fault:
            reply = ErrorReply(code=ErrorCode.INTERNAL, message="undecodable reply")
            self._deadlines.pop(fault.seq, None)
            return Answer(fault.seq, InternalError(reply), fault.envelope)
        seq = incoming.envelope.seq
        self._deadlines.pop(seq, None)
        return _answer(seq, incoming.body, incoming.envelope)

    def _expired(self) -> Answer | None:
        now = time.monotonic_ns()
        for seq, deadline in self._deadlines.items():
            if deadline.expired(now):
                del self._deadlines[seq]
                reply = ErrorReply(
                    code=ErrorCode.DEADLINE_EXCEEDED, message="no reply from the ingest"
                )
                return Answer(seq, DeadlineExceeded(reply))
        return None

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
        """Close the socket (and the context, when this client made it)."""
        self._stack.close()


class AsyncClient:
    """An asyncio client: any number of `await infer()` in flight on one DEALER socket.

    One reader task receives every reply and resolves the waiting request by its envelope
    sequence number. Every request ends: with its result, with the typed error the ingest
    sent, or with a local DeadlineExceeded when nothing came back by deadline plus grace.
    Use as `async with AsyncClient(endpoint) as client:`; leaving it closes the socket (and
    the context, when this client made it) and fails whatever is still waiting.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        name: str = "client",
        tenant: str = "",
        priority: int = 0,
        ctx: zmq.asyncio.Context | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        self._stack = ExitStack()
        if ctx is None:
            ctx = self._stack.enter_context(zmq.asyncio.Context())
        self.socket: zmq.asyncio.Socket = self._stack.enter_context(ctx.socket(zmq.DEALER))
        self.socket.setsockopt(zmq.LINGER, 0)
        secure(self.socket, endpoint, curve, "client")
        self.socket.connect(endpoint)
        # The channel only numbers, encodes and decodes here; every send and receive goes
        # through the awaitable socket itself.
        self.channel = Channel(cast("zmq.Socket[bytes]", self.socket), source=name)
        self.tenant = tenant
        self.priority = priority
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._waiting)

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read(), name="vigil-client-reader"
            )

    async def _read(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            try:
                incoming = self.channel.decode(frames)
            except FrameFault as fault:
                reply = ErrorReply(code=ErrorCode.INTERNAL, message="undecodable reply")
                answer = Answer(fault.seq, InternalError(reply), fault.envelope)
            else:
                answer = _answer(incoming.envelope.seq, incoming.body, incoming.envelope)
            waiter = self._waiting.pop(answer.seq, None)
            # A reply for a request that already ended (local deadline, cancelled) is a
            # straggler: there is nobody left to tell.
            if waiter is not None and not waiter.done():
                waiter.set_result(answer)

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
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[envelope.seq] = waiter
        try:
            try:
                await self.socket.send_multipart(
                    [
                        self.channel.encode(envelope),
                        self.channel.encode(request),
                        image.reshape(-1).data,
                    ],
                    flags=zmq.NOBLOCK,
                    copy=False,
                )
            except zmq.Again:
                return Answer(envelope.seq, _unreachable())
            give_up = deadline.later(_GRACE_NS)
            try:
                return await asyncio.wait_for(
                    waiter, give_up.remaining_ns(time.monotonic_ns()) / 1e9
                )
            except TimeoutError:
                reply = ErrorReply(
                    code=ErrorCode.DEADLINE_EXCEEDED, message="no reply from the ingest"
                )
                return Answer(envelope.seq, DeadlineExceeded(reply))
        finally:
            self._waiting.pop(envelope.seq, None)

    async def close(self) -> None:
        """Stop the reader, fail what still waits, close the socket (and own context)."""
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader
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
