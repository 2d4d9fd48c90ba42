"""The sealing loops: where they stop, what they keep, and how the store deals with the rest."""

from __future__ import annotations

import crc32c
import pytest

from vigil.nodes.logger import _sealc, _sealer
from vigil.nodes.logger._format import genesis_chain
from vigil.nodes.logger._sealer import Names, Record, SealFn, seal_python
from vigil.nodes.logger.store import LogStore, StoreConfig, read_entries, verify_store
from vigil.testing.crashsim import SimClock

pytestmark = pytest.mark.verifies("SR-LOG-001")

compiled: SealFn = _sealc.seal
SEALERS = [pytest.param(seal_python, id="python"), pytest.param(compiled, id="compiled")]
NAMES: Names = {("n", "e"): (1, 1, b"ne")}
CHAIN = genesis_chain(bytes(16))
GOOD: Record = ("n", "e", b"\xc0", b"")


def _seal(
    seal: SealFn, records: list[Record], now: object = None, room: int = 1 << 20
) -> tuple[int, bytes, int, bytes]:
    """(index reached, the sealed bytes, last seq, last chain)."""
    clock = SimClock()
    out = bytearray(room)
    reached, used, seq, chain = seal(
        records, 0, len(records), NAMES, now or clock.now_ns, crc32c.crc32c, 1, 0, CHAIN, out
    )
    assert not any(out[used:]), "nothing is written past the bytes used"
    return reached, bytes(out[:used]), seq, chain


def test_the_installed_package_seals_with_the_compiled_loop(store_path: str) -> None:
    """`make` builds the C loop and the store picks it; the stats say which loop served."""
    assert _sealer.SEALER == "compiled"
    assert _sealer.seal is compiled
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock()) as store:
        assert store.stats.sealer == "compiled"
    with LogStore.open(config, clock=SimClock(), sealer=seal_python) as store:
        assert store.stats.sealer == "python"


@pytest.mark.parametrize("seal", SEALERS)
@pytest.mark.parametrize(
    "bad",
    [
        ("n", "unknown", b"\xc0", b""),  # names not interned yet
        ("n", "e", b"\xc0", b"short"),  # trace id neither empty nor 16 bytes
        ("n", "e", bytes(5000), b""),  # does not fit the room left
    ],
    ids=["names", "trace", "room"],
)
def test_both_loops_stop_before_a_record_they_must_not_seal(seal: SealFn, bad: Record) -> None:
    """The records before it are sealed and returned; the index says where the loop stopped."""
    reached, data, seq, _ = _seal(seal, [GOOD, GOOD, bad, GOOD], room=4096)
    assert (reached, seq) == (2, 2)
    assert len(data) == 2 * 120


@pytest.mark.parametrize(
    "bad",
    [
        ("n", "e", "not bytes", b""),
        ("n", "e", b"\xc0"),
        ("n", ["unhashable"], b"\xc0", b""),
    ],
    ids=["payload", "short-record", "unhashable-event"],
)
def test_the_compiled_loop_stops_where_the_reference_would_raise(bad: Record) -> None:
    """A malformed record ends the compiled loop without an exception, keeping what it sealed;
    the reference loop raises for it (the store lets that one say what is wrong)."""
    reached, data, _, _ = _seal(compiled, [GOOD, bad, GOOD])
    assert (reached, len(data)) == (1, 120)
    with pytest.raises((TypeError, ValueError)):
        _seal(seal_python, [bad, GOOD])


def test_records_the_compiled_loop_leaves_are_sealed_by_the_reference(
    small_config: StoreConfig,
) -> None:
    """A record shaped other than the compiled loop expects (a list, a bytearray trace id) is
    sealed by the reference loop in the store, in its place in the burst."""
    odd: list[Record] = [GOOD, ["n", "e", b"\xc1", b""], ("n", "e", b"\xc2", bytearray(16)), GOOD]  # type: ignore[list-item]
    assert _seal(compiled, odd)[0] == 1
    with LogStore.open(small_config, clock=SimClock()) as store:
        store.append_many(odd)
    assert [e.payload for e in read_entries(small_config.path) if e.node == "n"] == [
        b"\xc0",
        b"\xc1",
        b"\xc2",
        b"\xc0",
    ]
    assert verify_store(small_config.path).ok


@pytest.mark.parametrize("reading", [-1, 1 << 64, "soon", OSError("PHC gone")])
def test_a_failing_or_out_of_range_clock_stops_the_compiled_loop(reading: object) -> None:
    """A clock that raises, or returns what no u64 holds, stops the loop before that entry."""
    readings = iter([5, 6])

    def now() -> int:
        value = next(readings, reading)
        if isinstance(value, BaseException):
            raise value
        return value  # type: ignore[return-value]

    reached, data, seq, chain = _seal(compiled, [GOOD, GOOD, GOOD], now=now)
    assert (reached, seq) == (2, 2)
    assert len(data) == 240 and chain != CHAIN


@pytest.mark.parametrize("seal", SEALERS)
def test_an_empty_burst_leaves_the_chain_as_it_was(seal: SealFn) -> None:
    """No records, or a stop at the first one, returns no bytes and the chain it was given."""
    assert _seal(seal, []) == (0, b"", 0, CHAIN)
    assert _seal(seal, [GOOD], room=8) == (0, b"", 0, CHAIN)


class _FailingClock(SimClock):
    """A PHC that vanishes after a number of readings."""

    def __init__(self, readings: int) -> None:
        super().__init__()
        self.left = readings

    def now_ns(self) -> int:
        if self.left == 0:
            raise OSError(19, "No such device")
        self.left -= 1
        return super().now_ns()


def test_a_clock_fault_mid_burst_raises_after_storing_what_came_before(
    small_config: StoreConfig,
) -> None:
    """The store keeps the entries sealed before the clock failed, raises the clock's error
    for the record it could not stamp, and stores nothing after it."""
    clock = _FailingClock(readings=10)
    with LogStore.open(small_config, clock=clock) as store:
        before = store.stats.last_seq
        clock.left = 3
        with pytest.raises(OSError, match="No such device"):
            store.append_many([GOOD] * 6)
        assert store.stats.last_seq == before + 3
        clock.left = 10
    assert [e.payload for e in read_entries(small_config.path) if e.node == "n"] == [b"\xc0"] * 3
    assert verify_store(small_config.path).ok


@pytest.mark.parametrize("seal", SEALERS)
def test_names_past_the_cache_bound_are_still_stored(store_path: str, seal: SealFn) -> None:
    """A burst naming more (node, event) pairs than the name cache holds stores every entry
    under its own names, with either loop."""
    config = StoreConfig(path=store_path, size_bytes=4 << 20, group_bytes=64 * 1024)
    records: list[Record] = [(f"node{i}", "e", b"\xc0", b"") for i in range(5000)]
    with LogStore.open(config, clock=SimClock(), sealer=seal) as store:
        store.append_many(records)
    assert [e.node for e in read_entries(store_path) if e.event == "e"] == [r[0] for r in records]
    assert verify_store(store_path).ok
