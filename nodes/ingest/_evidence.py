"""A request's evidence when it ends: the record the logger seals, and its spans."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.pubsub import Publisher
from vigil.nodes._tracing import RequestSpans
from vigil.schemas import (
    ErrorReply,
    InferResult,
    ModelAnnouncement,
    Outcome,
    RequestEvidence,
    Topic,
)

__all__ = ["Evidence", "RequestPath", "peer_of"]

RESULT_CODE = "OK"


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
    """Publishes every request's `RequestEvidence` once, when it ends, and records its spans.

    The record is small and one of many in the logger's group commit; the spans exist only
    where OpenTelemetry export is configured.
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
            start_us = min((dispatched_us or 0) + reply.queue_us, replied_us)
            end_us: int | None = min(start_us + reply.infer_us, replied_us)
            batch_start_us: int | None = start_us
        else:
            code, diag = str(reply.code), reply.diag_code
            name, version = (model.name, model.version) if model is not None else ("", "")
            worker, batch_id, batch_size = "", 0, 0
            batch_start_us = end_us = None
        self._publisher.publish(
            Topic.REQUEST_EVIDENCE,
            RequestEvidence(
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
                batch_start_us=batch_start_us,
                batch_end_us=end_us,
                replied_us=replied_us,
                digest=hashlib.sha256(body).digest(),
            ),
            trace=path.trace,
        )

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
