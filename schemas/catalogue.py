"""The topic catalogue: every bus topic, its message type, and every schema by id."""

from __future__ import annotations

from typing import Final

from vigil.schemas._base import Message
from vigil.schemas.audit import AuditEvent
from vigil.schemas.control import BusProbe, NodeReady, WorkerCredit
from vigil.schemas.diagnostics import DiagnosticEvent
from vigil.schemas.errors import ErrorReply, RepliesDropped
from vigil.schemas.evidence import BatchEvidence, EndedRequests
from vigil.schemas.health import Heartbeat, NodeExit, StateChange
from vigil.schemas.infer import InferRequest, InferResult
from vigil.schemas.log import LogCheckpoint, LogRecord
from vigil.schemas.model import ModelAnnouncement, ModelCommand, ModelEvent

__all__ = [
    "CONTROL_TOPICS",
    "LATCHED_TOPICS",
    "SCHEMAS",
    "TOPICS",
    "Topic",
    "schema_id",
    "topic_type",
]


class Topic:
    """Topic names, so a typo is a NameError and not a silent empty subscription."""

    INFER_REQUEST: Final = "infer/request"
    INFER_RESULT: Final = "infer/result"
    INFER_ERROR: Final = "infer/error"
    HEARTBEAT: Final = "health/heartbeat"
    NODE_EXIT: Final = "health/exit"
    SAFETY_STATE: Final = "safety/state"
    DIAGNOSTIC: Final = "diag/event"
    AUDIT: Final = "audit/event"
    LOG: Final = "log/record"
    LOG_CHECKPOINT: Final = "log/checkpoint"
    MODEL_EVENT: Final = "model/event"
    MODEL_ACTIVE: Final = "model/active"
    MODEL_COMMAND: Final = "model/command"
    BUS_PROBE: Final = "bus/probe"
    REQUEST_EVIDENCE: Final = "evidence/request"
    BATCH_EVIDENCE: Final = "evidence/batch"


TOPICS: Final[dict[str, type[Message]]] = {
    Topic.INFER_REQUEST: InferRequest,
    Topic.INFER_RESULT: InferResult,
    Topic.INFER_ERROR: ErrorReply,
    Topic.HEARTBEAT: Heartbeat,
    Topic.NODE_EXIT: NodeExit,
    Topic.SAFETY_STATE: StateChange,
    Topic.DIAGNOSTIC: DiagnosticEvent,
    Topic.AUDIT: AuditEvent,
    Topic.LOG: LogRecord,
    Topic.LOG_CHECKPOINT: LogCheckpoint,
    Topic.MODEL_EVENT: ModelEvent,
    Topic.MODEL_ACTIVE: ModelAnnouncement,
    Topic.MODEL_COMMAND: ModelCommand,
    Topic.BUS_PROBE: BusProbe,
    Topic.REQUEST_EVIDENCE: EndedRequests,
    Topic.BATCH_EVIDENCE: BatchEvidence,
}

# Topics whose last value the proxy keeps and re-sends to every new subscriber, so a late
# joiner learns the safety state and the serving model at once (the slow-joiner trap).
LATCHED_TOPICS: Final[frozenset[str]] = frozenset({Topic.SAFETY_STATE, Topic.MODEL_ACTIVE})

# Topics that steer live nodes (liveness, the safety state, the serving model). A replayed
# message on one of them is left out of every live node's state unless it is asked for, and
# `vigil bag play` warns before it publishes one into a running pipeline.
CONTROL_TOPICS: Final[frozenset[str]] = frozenset(
    {
        Topic.HEARTBEAT,
        Topic.SAFETY_STATE,
        Topic.MODEL_ACTIVE,
        Topic.MODEL_COMMAND,
        Topic.MODEL_EVENT,
    }
)


def schema_id(cls: type[Message]) -> str:
    """The id a message type travels under in the envelope (its msgspec tag)."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} has no string tag")
    return tag


_POINT_TO_POINT: tuple[type[Message], ...] = (
    InferRequest,
    ErrorReply,
    RepliesDropped,
    NodeReady,
    WorkerCredit,
)

SCHEMAS: Final[dict[str, type[Message]]] = {
    schema_id(cls): cls for cls in (*TOPICS.values(), *_POINT_TO_POINT)
}


def topic_type(topic: str) -> type[Message]:
    """The message type of a catalogued topic; KeyError names the topic when unknown."""
    return TOPICS[topic]
