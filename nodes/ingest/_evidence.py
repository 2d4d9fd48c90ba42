"""A request's evidence when it ends: the record the logger seals, and its spans."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.pubsub import Publisher
from vigil.nodes._tracing import RequestSpans
from vigil.schemas import (
    EndedRequests,
    ErrorReply,
    InferResult,
    ModelAnnouncement,
    Outcome,
    RequestEvidence,
    Topic,
    TracedEvidence,
)
from vigil.schemas.evidence import MAX_ENDED

__all__ = ["WINDOW_NS", "Evidence", "RequestPath", "peer_of"]

RESULT_CODE = "OK"
# How long the first evidence of a message may wait for more before it is published. Sealing
# waits for the logger's group commit anyway (5 ms by default); a message per loop turn
# carried two or three requests and still cost the bus and the logger a wake-up each.
WINDOW_NS: Final = 10_000_000


def peer_of(envelope: Envelope) -> str:
    """The client as its envelope names it: its source, with its instance when it has one."""
    return f"{envelope.source}.{envelope.instance}" if envelope.instance else envelope.source


@dataclass(slots=True)
class RequestPath:
    """What the ingest knows of one request's way through it, stamped on its monotonic clock
    (0: the stage was not reached)."""

    trace: TraceContext  # the ingest's span of the request
    parent: TraceContext | None  # the client's span, when it sent one
    received_ns: int
    peer: str = ""
    tenant: str = ""
    stream_id: str = ""
    frame_ts_us: int = 0
    admitted_ns: int = 0
    dispatched_ns: int = 0
    attempts: int = 0


def _after(stamp_ns: int, origin_ns: int) -> int | None:
    return max(0, (stamp_ns - origin_ns) // 1000) if stamp_ns else None


class Evidence:
    """Gathers every request's `RequestEvidence` once, when it ends, and records its spans.

    Evidence goes out in `EndedRequests` messages, each holding what ended within
    `WINDOW_NS` (or `MAX_ENDED` requests): one bus hop and one wake-up of the logger for many
    requests instead of one each. The loop calls `turn_ended` after every turn and `flush` on
    its way out. The spans exist only where OpenTelemetry export is configured.
    """

    def __init__(
        self,
        publisher: Publisher,
        spans: RequestSpans,
        clock: Callable[[], int],
        *,
        publish: bool = True,
    ) -> None:
        self._publisher = publisher
        self._spans = spans
        self._clock = clock
        self._publish = publish
        self._ended: list[TracedEvidence] = []
        self._first_ns = 0  # when the oldest evidence waiting ended

    @property
    def pending(self) -> int:
        """Requests whose evidence waits to be published."""
        return len(self._ended)

    def turn_ended(self) -> None:
        """Publish what waits once the oldest of it waited `WINDOW_NS` or a message is full."""
        ended = self._ended
        if ended and (len(ended) >= MAX_ENDED or self._clock() - self._first_ns >= WINDOW_NS):
            self.flush()

    def flush(self) -> None:
        """Publish every evidence waiting (nothing when there is none)."""
        ended, self._ended = self._ended, []
        for start in range(0, len(ended), MAX_ENDED):
            self._publisher.publish(
                Topic.REQUEST_EVIDENCE, EndedRequests(requests=ended[start : start + MAX_ENDED])
            )

    def ended(
        self,
        path: RequestPath,
        reply: InferResult | ErrorReply,
        body: bytes,
        *,
        outcome: Outcome,
        model: ModelAnnouncement | None = None,
    ) -> None:
        """Request `path` was answered with `reply`, whose encoded `body` the client got.

        `model` names the active model for an answer that carries none (a typed error).
        """
        now = self._clock()
        if self._spans.enabled:
            self._record_spans(path, now, reply, outcome)
        if not self._publish:
            return
        origin = path.received_ns
        replied_us = max(0, (now - origin) // 1000)
        dispatched_us = _after(path.dispatched_ns, origin)
        if isinstance(reply, InferResult):
            code, diag = RESULT_CODE, ""
            name, version, worker = reply.model, reply.version, reply.worker
            batch_id, batch_size = reply.batch_id, reply.batch_size
            # The worker's own durations, placed from the dispatch (see RequestEvidence).
            read_us = min((dispatched_us or 0) + reply.socket_us, replied_us)
            start_us = min(read_us + reply.queue_us, replied_us)
            end_us: int | None = min(start_us + reply.infer_us, replied_us)
            worker_read_us: int | None = read_us
            batch_start_us: int | None = start_us
        else:
            code, diag = str(reply.code), reply.diag_code
            name, version = (model.name, model.version) if model is not None else ("", "")
            worker, batch_id, batch_size = "", 0, 0
            worker_read_us = batch_start_us = end_us = None
        evidence = RequestEvidence(
            outcome=outcome,
            code=code,
            diag_code=diag[:16],
            peer=path.peer[:64],
            tenant=path.tenant,
            stream_id=path.stream_id,
            frame_ts_us=path.frame_ts_us,
            model=name,
            version=version[:64],
            worker=worker[:64],
            batch_id=batch_id,
            batch_size=batch_size,
            attempts=path.attempts,
            received_ns=time.time_ns() - (now - origin),
            admitted_us=_after(path.admitted_ns, origin),
            dispatched_us=dispatched_us,
            worker_read_us=worker_read_us,
            batch_start_us=batch_start_us,
            batch_end_us=end_us,
            replied_us=replied_us,
            digest=hashlib.sha256(body).digest(),
        )
        if not self._ended:
            self._first_ns = now
        self._ended.append(TracedEvidence(trace_id=path.trace.trace_id, evidence=evidence))

    def _record_spans(
        self, path: RequestPath, now: int, reply: InferResult | ErrorReply, outcome: Outcome
    ) -> None:
        """The request's ingest spans: the whole of it, its admission and its queue wait."""
        to_wall = time.time_ns() - now  # one offset for every stamp of this request
        spans, trace = self._spans, path.trace
        error = str(reply.code) if isinstance(reply, ErrorReply) else ""
        spans.record(
            "ingest.refuse" if outcome is Outcome.REFUSED else "ingest.request",
            trace,
            parent=path.parent,
            start_ns=path.received_ns + to_wall,
            end_ns=now + to_wall,
            attributes={
                "vigil.stream_id": path.stream_id,
                "vigil.tenant": path.tenant,
                "vigil.peer": path.peer,
                "vigil.attempts": path.attempts,
            },
            error=error,
            server=True,
        )
        if path.admitted_ns:
            spans.record(
                "ingest.admission",
                trace.child(),
                parent=trace,
                start_ns=path.received_ns + to_wall,
                end_ns=path.admitted_ns + to_wall,
            )
            spans.record(
                "ingest.queue",
                trace.child(),
                parent=trace,
                start_ns=path.admitted_ns + to_wall,
                end_ns=(path.dispatched_ns or now) + to_wall,
            )
