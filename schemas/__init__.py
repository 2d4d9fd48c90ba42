"""Every message type on the vigil bus, the topic catalogue, diagnostic and audit codes."""

from vigil.schemas._base import Config, Message
from vigil.schemas.audit import AuditClass, AuditEvent, AuditId, audit_class
from vigil.schemas.catalogue import (
    CONTROL_TOPICS,
    LATCHED_TOPICS,
    SCHEMAS,
    TOPICS,
    Topic,
    schema_id,
    topic_type,
)
from vigil.schemas.control import BusProbe, NodeReady, WorkerCredit
from vigil.schemas.diagnostics import DIAG_CODES, DiagCode, DiagnosticEvent, Severity
from vigil.schemas.errors import ErrorCode, ErrorReply, RepliesDropped
from vigil.schemas.evidence import (
    BatchEvidence,
    EndedRequests,
    Outcome,
    RequestEvidence,
    TracedEvidence,
)
from vigil.schemas.health import Heartbeat, NodeExit, SafetyState, StateChange
from vigil.schemas.infer import (
    Box,
    InferRequest,
    InferResult,
    PerceptionOutput,
    SharedFrame,
    TensorRef,
)
from vigil.schemas.log import LogCheckpoint, LogRecord
from vigil.schemas.model import (
    ModelAction,
    ModelAnnouncement,
    ModelCommand,
    ModelEvent,
    ModelStep,
)

__all__ = [
    "CONTROL_TOPICS",
    "DIAG_CODES",
    "LATCHED_TOPICS",
    "SCHEMAS",
    "TOPICS",
    "AuditClass",
    "AuditEvent",
    "AuditId",
    "BatchEvidence",
    "Box",
    "BusProbe",
    "Config",
    "DiagCode",
    "DiagnosticEvent",
    "EndedRequests",
    "ErrorCode",
    "ErrorReply",
    "Heartbeat",
    "InferRequest",
    "InferResult",
    "LogCheckpoint",
    "LogRecord",
    "Message",
    "ModelAction",
    "ModelAnnouncement",
    "ModelCommand",
    "ModelEvent",
    "ModelStep",
    "NodeExit",
    "NodeReady",
    "Outcome",
    "PerceptionOutput",
    "RepliesDropped",
    "RequestEvidence",
    "SafetyState",
    "Severity",
    "SharedFrame",
    "StateChange",
    "TensorRef",
    "Topic",
    "TracedEvidence",
    "WorkerCredit",
    "audit_class",
    "schema_id",
    "topic_type",
]
