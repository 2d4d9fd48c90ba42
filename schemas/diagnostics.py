"""Diagnostic events and the table of diagnostic codes."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["DIAG_CODES", "DiagCode", "DiagnosticEvent", "Severity"]


class DiagCode(enum.StrEnum):
    """Diagnostic trouble codes; the numbering follows the deployment guide."""

    MALFORMED_FRAME = "DIA-2001"
    SCHEMA_VIOLATION = "DIA-2002"
    SIZE_LIMIT = "DIA-2010"
    RANGE_OR_SEQUENCE = "DIA-2047"
    UNKNOWN_MODEL = "DIA-2030"
    RATE_LIMITED = "DIA-2050"
    OVERLOADED = "DIA-2051"
    REPLY_DROPPED = "DIA-2052"
    DEADLINE_EXCEEDED = "DIA-3002"
    DEADLINE_INFEASIBLE = "DIA-3003"
    DEADLINE_UNPRICED = "DIA-3004"
    WORKER_LOST = "DIA-3010"
    INFERENCE_FAILED = "DIA-3020"
    HEARTBEAT_MISSING = "DIA-4001"
    TOPIC_STALE = "DIA-4002"
    STATE_FLAPPING = "DIA-4003"
    NODE_RESTARTED = "DIA-4010"
    NODE_HUNG = "DIA-4011"
    SUPERVISOR_LOST = "DIA-4012"
    DISK_FULL = "DIA-4020"
    RUN_DIR_IN_USE = "DIA-4021"
    MODEL_INTEGRITY = "DIA-5001"
    MODEL_LOAD_FAILED = "DIA-5002"
    NO_MODEL = "DIA-5003"
    AUTH_REFUSED = "DIA-6001"
    IDENTITY_REFUSED = "DIA-6002"
    CONNECTION_LIMIT = "DIA-6003"
    MEMORY_GUARD = "DIA-6004"
    LOG_DEGRADED = "DIA-7001"


DIAG_CODES: dict[DiagCode, str] = {
    DiagCode.MALFORMED_FRAME: "a request frame could not be decoded (framing or MessagePack)",
    DiagCode.SCHEMA_VIOLATION: "a request does not match its schema (type, field, tag)",
    DiagCode.SIZE_LIMIT: "a request exceeds a size limit (bytes, frames, lengths)",
    DiagCode.RANGE_OR_SEQUENCE: "a value is out of range or a timestamp is out of sequence",
    DiagCode.UNKNOWN_MODEL: "a request named a model that no worker serves",
    DiagCode.RATE_LIMITED: "a request was refused by the rate limiter",
    DiagCode.OVERLOADED: "a request could not be served before its deadline at the current load",
    DiagCode.REPLY_DROPPED: "a reply was dropped: its client did not read its earlier replies",
    DiagCode.DEADLINE_EXCEEDED: "a request reached its deadline before a result (a system miss)",
    DiagCode.DEADLINE_INFEASIBLE: (
        "a request's budget was spent, or below the measured service time, on arrival"
    ),
    DiagCode.DEADLINE_UNPRICED: (
        "a request of a frame size never measured before missed its deadline (its budget "
        "could not be judged when it was admitted)"
    ),
    DiagCode.WORKER_LOST: "a worker stopped while holding in-flight requests",
    DiagCode.INFERENCE_FAILED: "the inference engine failed on a batch",
    DiagCode.HEARTBEAT_MISSING: "a node's heartbeat is overdue",
    DiagCode.TOPIC_STALE: "a topic stopped arriving within its staleness deadline",
    DiagCode.STATE_FLAPPING: "the safety state changes too often; recovery is slowed down",
    DiagCode.NODE_RESTARTED: "the launcher restarted a node",
    DiagCode.NODE_HUNG: "a node's process is alive but silent; the launcher kills it",
    DiagCode.SUPERVISOR_LOST: "the launcher is gone or silent; nodes stop in order",
    DiagCode.DISK_FULL: "a write to the run directory failed for lack of space; kept in memory",
    DiagCode.RUN_DIR_IN_USE: "a second launch was refused on a run directory in use",
    DiagCode.MODEL_INTEGRITY: "a model failed digest or signature verification",
    DiagCode.MODEL_LOAD_FAILED: "a verified model could not be loaded",
    DiagCode.NO_MODEL: "no verified model is active: a request is refused at once (UNAVAILABLE)",
    DiagCode.AUTH_REFUSED: "a peer was refused by bus security (no Curve or a key not allowed)",
    DiagCode.IDENTITY_REFUSED: "a request claimed a tenant or a priority its peer may not use",
    DiagCode.CONNECTION_LIMIT: "the ingest stopped accepting connections at its connection limit",
    DiagCode.MEMORY_GUARD: "the ingest cut connections that held memory over its budget",
    DiagCode.LOG_DEGRADED: "the logger cannot write a file beside its store (disk full); it keeps "
    "sealing into the preallocated store",
}


class Severity(enum.StrEnum):
    """How serious a diagnostic is."""

    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class DiagnosticEvent(Message, kw_only=True, frozen=True, tag="diag.event"):
    """A detected fault or rejected input, with the rule it broke."""

    code: DiagCode
    severity: Severity
    node: Annotated[str, msgspec.Meta(max_length=64)]
    instance: int = 0
    message: Annotated[str, msgspec.Meta(max_length=512)]
    field: str = ""
    rule: str = ""
    stream_id: str = ""
    # Who caused it (the authenticated peer of a refused request), and how many events this
    # one stands for: above a rate, refusals are sealed as aggregates per peer and reason,
    # naming the first and the last refused request's trace.
    peer: Annotated[str, msgspec.Meta(max_length=128)] = ""
    count: Annotated[int, msgspec.Meta(ge=1)] = 1
    first_trace_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    last_trace_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
