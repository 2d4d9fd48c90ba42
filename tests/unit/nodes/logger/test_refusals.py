"""The logger's answer to records the store refuses: a sealed `log.refused` entry in place."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from vigil.nodes.logger.node import REFUSED_EVENT, Refusal, _append
from vigil.nodes.logger.store import (
    EntryTooLarge,
    LogStore,
    Record,
    RecordRefused,
    StoreConfig,
    read_entries,
    verify_store,
)
from vigil.testing.crashsim import SimClock

pytestmark = pytest.mark.verifies("SR-LOG-003", "SR-ERR-002")

GOOD: Record = ("n", "diag.event", b"\xc0", b"")


def test_the_store_says_which_record_it_refused(small_config: StoreConfig) -> None:
    """RecordRefused (a ValueError) carries the refused record's index in the burst and the
    reason; an entry too large for any group is an EntryTooLarge with its size."""
    huge: Record = ("n", "diag.event", bytes(5000), b"")
    with LogStore.open(small_config, clock=SimClock()) as store:
        with pytest.raises(RecordRefused) as refused:
            store.append_many([GOOD, GOOD, GOOD, ("", "diag.event", b"\xc0", b""), GOOD])
        assert refused.value.index == 3 and "255 UTF-8 bytes" in refused.value.reason
        assert isinstance(refused.value, ValueError)
        with pytest.raises(EntryTooLarge) as large:
            store.append_many([GOOD, huge])
        assert large.value.index == 1 and large.value.size > large.value.limit


def test_refused_records_are_sealed_in_place_and_the_rest_of_the_burst_is_kept(
    small_config: StoreConfig,
) -> None:
    """Each refused record becomes a `log.refused` entry where it stood, holding the reason,
    the message and its SHA-256; one too large for any entry keeps only its size and digest."""
    huge = bytes(range(256)) * 20
    burst: list[Record] = [
        GOOD,
        ("n", "diag.event", b"\xc1", b"short"),
        ("n", "diag.event", huge, bytes(16)),
        ("x" * 300, "diag.event", b"\xc2", b""),
        GOOD,
    ]
    with LogStore.open(small_config, clock=SimClock()) as store:
        refusals = _append(store, burst)
    assert [r.reason.split()[0] for r in refusals] == ["trace_id", "entry", "node"]
    entries = [e for e in read_entries(small_config.path) if not e.event.startswith("log.c")]
    assert [e.event for e in entries] == [
        "diag.event",
        REFUSED_EVENT,
        REFUSED_EVENT,
        REFUSED_EVENT,
        "diag.event",
    ]
    sealed = [msgspec.msgpack.decode(e.payload, type=Refusal) for e in entries[1:4]]
    assert sealed == refusals
    assert sealed[0].payload == b"\xc1" and sealed[0].trace_id == b"short"
    assert sealed[1].payload == b"" and sealed[1].payload_bytes == len(huge)
    assert sealed[1].sha256 == hashlib.sha256(huge).digest()
    assert sealed[2].node == "x" * 300 and sealed[2].payload == b"\xc2"
    assert verify_store(small_config.path, allow_fallback_clock=True).ok
