"""Binary audit records: fixed layout, read back in place."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from vigil.nodes.logger._audit import (
    AUDIT_DTYPE,
    AUDIT_EVENT,
    AUDIT_RECORD,
    AuditRecordError,
    audit_view,
    pack_audit,
    unpack_audit,
)
from vigil.nodes.logger.store import LogStore, StoreConfig, read_entries
from vigil.schemas.audit import AuditId
from vigil.testing.crashsim import SimClock

pytestmark = pytest.mark.verifies("SR-LOG-003")


def test_layout_is_46_little_endian_bytes() -> None:
    """u64 timestamp, u16 event, u32 instance, 32-byte payload, little-endian, unpadded."""
    record = pack_audit(0x0102030405060708, AuditId.LOG_GAP, 0x0A0B0C0D, b"\xff")
    assert AUDIT_RECORD.size == AUDIT_DTYPE.itemsize == len(record) == 46
    assert record[:14] == bytes.fromhex("0807060504030201d3070d0c0b0a")  # LOG_GAP = 2003
    assert record[14:] == b"\xff" + bytes(31)


def test_struct_read_back_names_the_audit_id() -> None:
    """unpack_audit returns the AuditId member."""
    record = unpack_audit(pack_audit(5, AuditId.MODEL_REFUSED, 3, b"sig"))
    assert record.event is AuditId.MODEL_REFUSED
    assert record.payload.rstrip(b"\0") == b"sig"


def test_numpy_view_shares_the_buffer() -> None:
    """audit_view reads records in place: the array is a view, not a copy."""
    raw = bytearray(pack_audit(1, AuditId.NODE_STARTED, 1) + pack_audit(2, AuditId.NODE_STOPPED, 1))
    view = audit_view(raw)
    assert np.shares_memory(view, np.frombuffer(raw, dtype=np.uint8))
    assert view["event"].tolist() == [1002, 1003]


def test_unknown_event_id_is_refused() -> None:
    """An id outside the AuditId table raises AuditRecordError."""
    raw = AUDIT_RECORD.pack(1, 9999, 0, b"")
    with pytest.raises(AuditRecordError):
        unpack_audit(raw)


def test_oversized_payload_is_refused() -> None:
    """A payload over 32 bytes is a ValueError."""
    with pytest.raises(ValueError):
        pack_audit(1, AuditId.LOG_GAP, 0, bytes(33))


def test_store_keeps_audit_records_as_sealed_entries(store_path: str) -> None:
    """An audit record is stored as an audit.record entry whose record sits at payload offset 2."""
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock()) as store:
        store.append_many((store.audit_record(AuditId.LOG_GAP, instance=7, payload=b"gap"),))
    entry = next(e for e in read_entries(store_path) if e.event == AUDIT_EVENT)
    assert msgspec.msgpack.decode(entry.payload) == entry.payload[2:]
    record = audit_view(entry.payload, offset=2)[0]
    assert (int(record["event"]), int(record["instance"])) == (AuditId.LOG_GAP, 7)
