"""Audit events: decisions an assessor must be able to trace."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["AuditEvent", "AuditId"]


class AuditId(enum.IntEnum):
    """Audit event ids; the binary audit record stores them as u16."""

    NODE_STARTED = 100
    NODE_STOPPED = 101
    NODE_RESTARTED = 102
    NODE_FAILED = 103
    STATE_TRANSITION = 200
    REQUEST_REJECTED = 300
    MODEL_SEEN = 400
    MODEL_VERIFIED = 401
    MODEL_REFUSED = 402
    MODEL_LOADING = 403
    MODEL_READY = 404
    MODEL_COMMITTED = 405
    MODEL_ROLLED_BACK = 406
    LOG_GAP = 500


class AuditEvent(Message, kw_only=True, frozen=True, tag="audit.event"):
    """One auditable decision, with who took it and why."""

    event: AuditId
    node: Annotated[str, msgspec.Meta(max_length=64)]
    instance: int = 0
    detail: Annotated[str, msgspec.Meta(max_length=1024)] = ""
