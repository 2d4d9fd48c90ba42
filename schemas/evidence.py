"""Evidence of the request path: one record per request at its end, one per inference batch."""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

from vigil.schemas._base import Message

__all__ = [
    "MAX_ENDED",
    "BatchEvidence",
    "EndedRequests",
    "Outcome",
    "RequestEvidence",
    "TracedEvidence",
]

Name = Annotated[str, msgspec.Meta(max_length=64)]
Micros = Annotated[int, msgspec.Meta(ge=0)]
# The most requests one `EndedRequests` carries (more are sent as several).
MAX_ENDED: Final = 256


class Outcome(enum.StrEnum):
    """How a request ended."""

    SERVED = "served"  # with a result
    REFUSED = "refused"  # with a typed error, before it was admitted
    FAILED = "failed"  # with a typed error, after it was admitted


class RequestEvidence(Message, kw_only=True, frozen=True, tag="evidence.request"):
    """One request's path through the pipeline, published by the ingest when it answers.

    The envelope carries the request's trace. `received_ns` is the ingest's wall clock when the
    request arrived; every later stage is an offset from it in microseconds on the ingest's
    monotonic clock, None where the request never got that far. The worker's stages are placed
    from the durations the worker reports, counted from the dispatch: the wait in its socket
    buffer until its loop read the request (`worker_read_us`; the transit across hosts falls
    there, with their clock offset), its queue wait for a batch and its batch; the way back
    falls into the reply.
    """

    outcome: Outcome
    code: Annotated[str, msgspec.Meta(max_length=32)]  # "OK" for a result, else the ErrorCode
    diag_code: Annotated[str, msgspec.Meta(max_length=16)] = ""
    peer: Name = ""  # the client's source name (with its instance)
    tenant: Name = ""
    stream_id: Name = ""
    frame_ts_us: Micros = 0
    model: Name = ""
    version: Name = ""
    worker: Name = ""
    batch_id: Micros = 0
    batch_size: Micros = 0
    attempts: Micros = 0
    received_ns: Micros = 0
    admitted_us: Micros | None = None
    dispatched_us: Micros | None = None
    worker_read_us: Micros | None = None
    batch_start_us: Micros | None = None
    batch_end_us: Micros | None = None
    replied_us: Micros = 0
    # SHA-256 of the reply body as the client received it (a result or a typed error).
    digest: Annotated[bytes, msgspec.Meta(max_length=32)] = b""


class TracedEvidence(msgspec.Struct, frozen=True, kw_only=True):
    """One request's evidence with the trace it ended in (what its envelope would carry)."""

    trace_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    evidence: RequestEvidence


class EndedRequests(Message, kw_only=True, frozen=True, tag="evidence.requests"):
    """The evidence of requests that ended within a few milliseconds of each other, in the
    order they ended: one message for many, so that evidence costs the bus and the logger one
    hop for many requests rather than one each. The logger seals one `RequestEvidence` entry
    per request, in its trace."""

    requests: Annotated[list[TracedEvidence], msgspec.Meta(max_length=MAX_ENDED)]


class BatchEvidence(Message, kw_only=True, frozen=True, tag="evidence.batch"):
    """One inference batch as a worker ran it (what per-batch metrics observe once)."""

    worker: Name
    model: Name
    version: Name
    batch_id: Micros
    size: Annotated[int, msgspec.Meta(ge=1)]
    infer_us: Micros  # pre-processing and the engine's run
    postprocess_us: Micros = 0
    failed: bool = False
    background: bool = False  # run at background CPU priority (a peer beyond its share)
