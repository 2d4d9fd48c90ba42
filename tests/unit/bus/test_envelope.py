"""The envelope's trace and deadline: packed and unpacked in one place, wire format unchanged."""

from __future__ import annotations

import msgspec
import pytest

from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope, TraceContext

TRACE = TraceContext(bytes(range(1, 17)), bytes(range(1, 9)), 1)

# An envelope as encoded before its deadline field was renamed `deadline_ns` ->
# `deadline_wall_ns` (every field set; captured from the encoder of that version).
ENCODED_BEFORE_RENAME = bytes.fromhex(
    "9cad696e6665722e7265717565737407a6636c69656e7403cf17979cfe362a0000c4100102030405060708"
    "090a0b0c0d0e0f10c408010203040506070801cf17979cfead5f940005a461636d65cd04d2"
)
DECODED_AFTER_RENAME = Envelope(
    schema="infer.request",
    seq=7,
    source="client",
    instance=3,
    stamp_ns=1_700_000_000_000_000_000,
    trace_id=TRACE.trace_id,
    span_id=TRACE.span_id,
    trace_flags=1,
    deadline_wall_ns=1_700_000_002_000_000_000,
    priority=5,
    tenant="acme",
    session=1234,
)


def test_an_envelope_encoded_before_the_rename_decodes_after() -> None:
    """The rename of `deadline_ns` kept the wire format: old bytes decode field for field."""
    assert Codec().decode_envelope(ENCODED_BEFORE_RENAME) == DECODED_AFTER_RENAME


def test_an_envelope_encodes_as_before_the_rename_plus_the_appended_replay_field() -> None:
    """An envelope encodes to the bytes the previous version wrote, with one more array item
    (`replay`, 0) at the end: the rename changed nothing on the wire."""
    encoded = Codec().encode(DECODED_AFTER_RENAME)
    # ... and `request_id` (b"") and `background` (false) after it.
    assert encoded == b"\x9f" + ENCODED_BEFORE_RENAME[1:] + b"\x00" + b"\xc4\x00" + b"\xc2"


def test_a_reader_of_the_previous_envelope_decodes_a_replayed_one() -> None:
    """An envelope type without `replay` decodes a replayed envelope field for field."""
    fields = _FIELDS[: [f for f, _, _ in _FIELDS].index("replay")]
    previous = msgspec.defstruct("Envelope", fields, array_like=True, frozen=True, kw_only=True)
    replayed = msgspec.structs.replace(DECODED_AFTER_RENAME, replay=99)
    decoded = msgspec.msgpack.decode(Codec().encode(replayed), type=previous)
    assert msgspec.structs.asdict(decoded) == {
        k: v
        for k, v in msgspec.structs.asdict(DECODED_AFTER_RENAME).items()
        if k not in ("replay", "request_id", "background")
    }


_FIELDS = [(f.name, f.type, f.default) for f in msgspec.structs.fields(Envelope)]


def test_an_older_reader_decodes_a_newer_envelope() -> None:
    """An envelope with a request id decodes in a reader that knows fewer fields: the
    ones it does not know come last and are ignored."""

    class Older(msgspec.Struct, array_like=True):
        schema: str
        seq: int

    new = msgspec.structs.replace(DECODED_AFTER_RENAME, request_id=b"\x01" * 16)
    older = msgspec.msgpack.decode(Codec().encode(new), type=Older)
    assert (older.schema, older.seq) == ("infer.request", 7)


def test_trace_unpacks_the_flattened_fields() -> None:
    """`trace` rebuilds the sender's context from the three wire fields."""
    assert DECODED_AFTER_RENAME.trace == TRACE


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        (b"", b""),
        (bytes(range(1, 16)), TRACE.span_id),
        (b"\x01", TRACE.span_id),
        (TRACE.trace_id, bytes(range(1, 8))),
        (TRACE.trace_id, b""),
        (bytes(16), TRACE.span_id),
        (TRACE.trace_id, bytes(8)),
    ],
)
def test_trace_is_none_when_absent_or_malformed(trace_id: bytes, span_id: bytes) -> None:
    """Missing, short (1-15 or 1-7 byte) or all-zero ids give no trace context."""
    envelope = Envelope(schema="x", seq=1, source="s", trace_id=trace_id, span_id=span_id)
    assert envelope.trace is None


def test_with_trace_packs_the_context() -> None:
    """`with_trace` sets the three wire fields; the trace reads back unchanged."""
    envelope = Envelope(schema="x", seq=1, source="s").with_trace(TRACE)
    assert (envelope.trace_id, envelope.span_id, envelope.trace_flags) == (
        TRACE.trace_id,
        TRACE.span_id,
        TRACE.flags,
    )
    assert envelope.trace == TRACE


def test_with_trace_none_clears_the_fields() -> None:
    """`with_trace(None)` leaves an envelope without a trace."""
    envelope = DECODED_AFTER_RENAME.with_trace(None)
    assert (envelope.trace_id, envelope.span_id, envelope.trace_flags) == (b"", b"", 0)
    assert msgspec.structs.replace(envelope, trace_id=TRACE.trace_id).trace is None


def test_build_packs_the_trace_as_with_trace_does() -> None:
    """The constructor path and `with_trace` give the same envelope; no trace, no fields."""
    plain = Envelope(schema="x", seq=1, source="s", stamp_ns=5, deadline_wall_ns=9)
    built = Envelope.build(schema="x", seq=1, source="s", stamp_ns=5, deadline_wall_ns=9)
    assert built == plain
    traced = Envelope.build(
        schema="x", seq=1, source="s", stamp_ns=5, trace=TRACE, deadline_wall_ns=9
    )
    assert traced == plain.with_trace(TRACE)


def test_budget_is_the_deadline_less_the_senders_stamp() -> None:
    """`budget_ns` reads the deadline against the sender's own stamp; None without one."""
    assert DECODED_AFTER_RENAME.budget_ns == 2_000_000_000
    late = Envelope(schema="x", seq=1, source="s", stamp_ns=10, deadline_wall_ns=4)
    assert late.budget_ns == -6
    assert Envelope(schema="x", seq=1, source="s", stamp_ns=10).budget_ns is None
