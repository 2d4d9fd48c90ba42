"""Property tests of the entry and audit codecs, reporting which fields hit their boundaries."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import crc32c
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from vigil.bus.ptp import ClockSource
from vigil.nodes.logger._audit import pack_audit, unpack_audit
from vigil.nodes.logger._format import Entry, decode_entry_at, encode_entry, genesis_chain
from vigil.nodes.logger._sealer import Record, SealFn, seal_python
from vigil.schemas.audit import AuditId

_sealc: ModuleType | None
try:
    from vigil.nodes.logger import _sealc
except ImportError:  # an unbuilt tree: tests/unit/nodes/logger/test_sealer.py says so
    _sealc = None

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


SEALERS = [pytest.param(seal_python, id="python")] + (
    [pytest.param(_sealc.seal, id="compiled")] if _sealc is not None else []
)


@pytest.mark.verifies("SR-LOG-001")
@pytest.mark.parametrize("seal", SEALERS)
def test_sealing_loops_write_exactly_the_reference_entries(seal: SealFn) -> None:
    """Each sealing loop seals a burst into the same bytes as `encode_entry` one by one, with
    every header field at its bounds, and stops exactly where the room runs out."""
    # Sealed entries are numbered from 1.
    seen = Boundaries({**ENTRY_FIELDS, "seq": (1, U64)})

    @settings(max_examples=300, deadline=None)
    @given(
        first_seq=_edge(0, U64 - 1),
        stamps=st.lists(_edge(0, U64), min_size=1, max_size=8),
        clock=st.sampled_from(list(ClockSource)),
        names=st.lists(
            st.tuples(
                st.one_of(st.just("n"), st.just("x" * 255), st.text(min_size=1, max_size=20)),
                st.one_of(st.just(""), st.just("e" * 255), st.integers(0, 9999)),
            ).filter(lambda p: 0 < len(p[0].encode()) <= 255),
            min_size=1,
            max_size=3,
        ),
        picks=st.lists(
            st.tuples(
                st.integers(0, 2),
                st.one_of(st.just(b""), st.binary(min_size=16, max_size=16)),
                st.one_of(st.just(b""), st.just(bytes(4096)), st.binary(max_size=300)),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
        ),
        slack=st.integers(-64, 64),
        chain=st.binary(min_size=32, max_size=32),
    )
    def check(*, first_seq: int, stamps: list[int], clock: ClockSource,
              names: list[tuple[str, str | int]], picks: list[tuple[int, bytes, bytes, bool]],
              slack: int, chain: bytes) -> None:  # fmt: skip
        interned = {
            (node, event_name): (len(node.encode()), len(str(event_name).encode()),
                                 node.encode() + str(event_name).encode())
            for node, event_name in names
        }  # fmt: skip
        records: list[Record] = [
            (*names[which % len(names)], memoryview(payload) if as_view else payload, trace)
            for which, trace, payload, as_view in picks[: U64 - first_seq]
        ]
        expected, prev = [], chain
        for i, (node, event_name, payload, trace) in enumerate(records):
            raw, prev = encode_entry(
                seq=first_seq + 1 + i, timestamp_ns=stamps[i % len(stamps)],
                clock_source=clock, node=node.encode(), event=str(event_name).encode(),
                trace_id=trace, payload=bytes(payload), prev_chain=prev,
            )  # fmt: skip
            expected.append((raw, prev))
        # Room for some of the entries, give or take a few bytes: the loop stops before the
        # first entry that does not fit whole.
        fits = (len(records) + 1) // 2
        room = max(0, sum(len(raw) for raw, _ in expected[:fits]) + slack)
        keep = 0
        while keep < len(expected) and sum(len(r) for r, _ in expected[: keep + 1]) <= room:
            keep += 1
        readings = iter(stamps * 8)
        out = bytearray(b"\xaa" * (room + 64))
        reached, used, seq, last = seal(
            records, 0, len(records), interned, lambda: next(readings), crc32c.crc32c,
            int(clock), first_seq, chain, memoryview(out)[:room],
        )  # fmt: skip
        assert reached == keep
        assert out[:used] == b"".join(raw for raw, _ in expected[:keep])
        assert out[used:] == b"\xaa" * (room + 64 - used)  # nothing written past what it used
        assert (seq, last) == (first_seq + keep, expected[keep - 1][1] if keep else chain)
        for i in range(keep):
            node, event_name, payload, trace = records[i]
            for field, value in (
                ("seq", first_seq + 1 + i), ("timestamp_ns", stamps[i % len(stamps)]),
                ("clock_source", int(clock)), ("node_len", len(node.encode())),
                ("event_len", len(str(event_name).encode())),
                ("trace_len", len(trace)), ("payload_len", len(payload)),
            ):  # fmt: skip
                seen.note(field, value)

    _run(check)
    seen.report(f"sealing loop ({seal.__module__})")
    assert seen.missing() == []
