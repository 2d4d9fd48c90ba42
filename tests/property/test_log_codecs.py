"""Property tests of the entry and audit codecs, reporting which fields hit their boundaries."""

from __future__ import annotations

import sys
from collections.abc import Callable

from hypothesis import event, given, settings
from hypothesis import strategies as st

from vigil.bus.ptp import ClockSource
from vigil.nodes.logger._audit import pack_audit, unpack_audit
from vigil.nodes.logger._format import Entry, decode_entry_at, encode_entry, genesis_chain
from vigil.schemas.audit import AuditId

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def _edge(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], with both ends drawn often."""
    return st.one_of(st.sampled_from([low, high]), st.integers(low, high))


class Boundaries:
    """Which (field, end) pairs the examples reached; prints a table at the end of a test."""

    def __init__(self, fields: dict[str, tuple[int, int]]) -> None:
        self.fields = fields
        self.hit: set[tuple[str, str]] = set()

    def note(self, field: str, value: int) -> None:
        low, high = self.fields[field]
        for end, bound in (("min", low), ("max", high)):
            if value == bound:
                self.hit.add((field, end))
                event(f"{field} at {end}")

    def missing(self) -> list[tuple[str, str]]:
        return [(f, e) for f in self.fields for e in ("min", "max") if (f, e) not in self.hit]

    def report(self, title: str) -> None:
        rows = [f"{f:<14} min={'hit' if (f, 'min') in self.hit else '-'} "
                f"max={'hit' if (f, 'max') in self.hit else '-'}" for f in self.fields]  # fmt: skip
        sys.stdout.write(f"\n{title} boundary coverage:\n  " + "\n  ".join(rows) + "\n")


ENTRY_FIELDS = {
    "seq": (0, U64),
    "timestamp_ns": (0, U64),
    "clock_source": (min(ClockSource), max(ClockSource)),
    "node_len": (1, 255),
    "event_len": (0, 255),
    "trace_len": (0, 16),
    "payload_len": (0, 4096),
}


def _run(check: Callable[[], None]) -> None:
    check()


def test_entry_codec_round_trips_every_field_at_its_bounds() -> None:
    """encode/decode round-trips; every header field is exercised at its min and max."""
    seen = Boundaries(ENTRY_FIELDS)

    @settings(max_examples=600, deadline=None)
    @given(
        seq=_edge(0, U64),
        ts=_edge(0, U64),
        clock=st.sampled_from(list(ClockSource)),
        node=st.one_of(
            st.just("n"),
            st.just("x" * 255),
            st.text(min_size=1, max_size=40).filter(lambda s: 0 < len(s.encode()) <= 255),
        ),
        event_name=st.one_of(
            st.just(""),
            st.just("e" * 255),
            st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255),
        ),
        trace=st.one_of(st.just(b""), st.binary(min_size=16, max_size=16)),
        payload=st.one_of(st.just(b""), st.just(bytes(4096)), st.binary(max_size=300)),
    )
    def check(*, seq: int, ts: int, clock: ClockSource, node: str, event_name: str, trace: bytes,
              payload: bytes) -> None:  # fmt: skip
        prev = genesis_chain(b"\x01" * 16)
        raw, chain = encode_entry(
            seq=seq, timestamp_ns=ts, clock_source=clock, node=node.encode(),
            event=event_name.encode(), trace_id=trace, payload=payload, prev_chain=prev,
        )  # fmt: skip
        if trace == bytes(16):
            trace = b""
        found = decode_entry_at(raw, 0, len(raw), seq, prev)
        assert found == (
            Entry(seq=seq, timestamp_ns=ts, clock_source=clock, node=node, event=event_name,
                  trace_id=trace, payload=payload, chain=chain),
            len(raw),
        )  # fmt: skip
        for field, value in (
            ("seq", seq), ("timestamp_ns", ts), ("clock_source", int(clock)),
            ("node_len", len(node.encode())), ("event_len", len(event_name.encode())),
            ("trace_len", len(trace)), ("payload_len", len(payload)),
        ):  # fmt: skip
            seen.note(field, value)

    _run(check)
    seen.report("entry codec")
    assert seen.missing() == []


AUDIT_FIELDS = {
    "timestamp_ns": (0, U64),
    "event": (min(AuditId), max(AuditId)),
    "instance": (0, U32),
    "payload_len": (0, 32),
}


def test_audit_codec_round_trips_every_field_at_its_bounds() -> None:
    """pack/unpack round-trips; every audit field is exercised at its min and max."""
    seen = Boundaries(AUDIT_FIELDS)

    @settings(max_examples=400, deadline=None)
    @given(
        ts=_edge(0, U64),
        audit_id=st.sampled_from(list(AuditId)),
        instance=_edge(0, U32),
        payload=st.one_of(st.just(b""), st.just(b"\xff" * 32), st.binary(max_size=32)),
    )
    def check(ts: int, audit_id: AuditId, instance: int, payload: bytes) -> None:
        record = unpack_audit(pack_audit(ts, audit_id, instance, payload))
        assert record == (ts, audit_id, instance, payload.ljust(32, b"\0"))
        for field, value in (
            ("timestamp_ns", ts), ("event", int(audit_id)), ("instance", instance),
            ("payload_len", len(payload)),
        ):  # fmt: skip
            seen.note(field, value)

    _run(check)
    seen.report("audit codec")
    assert seen.missing() == []
