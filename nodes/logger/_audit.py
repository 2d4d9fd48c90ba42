"""Binary audit records: a fixed 46-byte little-endian layout, read back in place.

offset  size  field
0       8     timestamp_ns   u64
8       2     event          u16  (vigil.schemas.audit.AuditId)
10      4     instance       u32  (software-instance id)
14      32    payload        32 bytes, zero-padded
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import numpy as np

from vigil.errors import VigilError
from vigil.schemas.audit import AuditId

__all__ = [
    "AUDIT_DTYPE",
    "AUDIT_EVENT",
    "AUDIT_RECORD",
    "AuditRecord",
    "AuditRecordError",
    "audit_view",
    "pack_audit",
    "unpack_audit",
]

AUDIT_RECORD: Final = struct.Struct("<QHI32s")
AUDIT_DTYPE: Final = np.dtype(
    [("timestamp_ns", "<u8"), ("event", "<u2"), ("instance", "<u4"), ("payload", "V32")]
)
# The event name audit entries carry in the store.
AUDIT_EVENT: Final = "audit.record"
PAYLOAD_BYTES: Final = 32


class AuditRecordError(VigilError):
    """Bytes are not an audit record (wrong size or unknown event id)."""


class AuditRecord(NamedTuple):
    """One decoded audit record."""

    timestamp_ns: int
    event: AuditId
    instance: int
    payload: bytes


# implements: SR-LOG-003
def pack_audit(timestamp_ns: int, event: AuditId, instance: int, payload: bytes = b"") -> bytes:
    """The 46-byte record; ValueError when a field is out of its range."""
    if len(payload) > PAYLOAD_BYTES:
        raise ValueError(f"audit payload is {len(payload)} bytes, at most {PAYLOAD_BYTES}")
    if not 0 <= timestamp_ns < 1 << 64 or not 0 <= instance < 1 << 32:
        raise ValueError("timestamp_ns must fit u64 and instance u32")
    return AUDIT_RECORD.pack(timestamp_ns, AuditId(event), instance, payload)


def unpack_audit(buf: bytes | bytearray | memoryview, offset: int = 0) -> AuditRecord:
    """Decode the record at `offset` in place (`struct.unpack_from`, the buffer is not copied)."""
    if len(buf) - offset < AUDIT_RECORD.size:
        raise AuditRecordError(f"{len(buf) - offset} bytes is short of an audit record")
    ts, event, instance, payload = AUDIT_RECORD.unpack_from(buf, offset)
    try:
        known = AuditId(event)
    except ValueError as exc:
        raise AuditRecordError(f"unknown audit event id {event}") from exc
    return AuditRecord(ts, known, instance, payload)


def audit_view(buf: bytes | bytearray | memoryview, offset: int = 0, count: int = -1) -> np.ndarray:
    """A structured-array view of contiguous records: no byte is copied."""
    return np.frombuffer(buf, dtype=AUDIT_DTYPE, count=count, offset=offset)
