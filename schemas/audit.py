"""Audit events: decisions an assessor must be able to trace, in stable numbered classes.

Each `AuditId` is `class * 1000 + n`: the thousands name its `AuditClass` (the event classes of
the deployment guide's audit records, ISO 26262-8 Annex D style), so a reader of the binary
record (`nodes/logger/_audit.py`) maps an id to its class without a table. Ids are never reused
or renumbered; `docs/audit.md` is the table, and a test holds it to this enum.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["AuditClass", "AuditEvent", "AuditId", "audit_class"]


class AuditClass(enum.IntEnum):
    """The class of an audit event (its id's thousands)."""

    STATE_CHANGE = 1
    DIAGNOSTIC = 2
    CONFIGURATION_CHANGE = 3
    SOFTWARE_UPDATE = 4
    SECURITY_EVENT = 5


class AuditId(enum.IntEnum):
    """Audit event ids; the binary audit record stores them as u16."""

    # state change
    STATE_TRANSITION = 1001
    NODE_STARTED = 1002
    NODE_STOPPED = 1003
    # diagnostic
    NODE_RESTARTED = 2001
    NODE_FAILED = 2002
    LOG_GAP = 2003
    REQUEST_REJECTED = 2004
    # configuration change
    LAUNCH_CONFIGURED = 3001
    # software update (model versions)
    MODEL_SEEN = 4001
    MODEL_VERIFIED = 4002
    MODEL_LOADING = 4003
    MODEL_READY = 4004
    MODEL_COMMITTED = 4005
    MODEL_ROLLED_BACK = 4006
    MODEL_SWITCHED = 4007
    # security event
    MODEL_REFUSED = 5001
    AUTH_REFUSED = 5002
    CONNECTION_REFUSED = 5003


def audit_class(event: AuditId) -> AuditClass:
    """The class an audit id belongs to."""
    return AuditClass(int(event) // 1000)


class AuditEvent(Message, kw_only=True, frozen=True, tag="audit.event"):
    """One auditable decision, with who took it and why."""

    event: AuditId
    node: Annotated[str, msgspec.Meta(max_length=64)]
    instance: int = 0
    detail: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    # The software-instance id the launch file gives the node (0: the launcher itself); the
    # binary audit record's `instance` field.
    instance_id: Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)] = 0
