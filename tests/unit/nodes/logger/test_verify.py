"""verify reports every single-bit flip, deletion, duplication and reordering of entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.nodes.logger._format import GROUP_HEADER_BYTES, META_FIXED
from vigil.nodes.logger._scan import open_view
from vigil.nodes.logger._verify import FaultClass, verify_image
from vigil.nodes.logger.store import LogStore, StoreConfig, verify_store
from vigil.testing import logtamper
from vigil.testing.crashsim import RecordingMedium, SimClock, SimMonotonic

pytestmark = pytest.mark.verifies("SR-LOG-001")

SIZE = 32 * 1024
CONFIG = StoreConfig(path="sim", size_bytes=SIZE, group_bytes=4096, background_commit=False)


def _store(entries: int, payload: int, *, close: bool = True, step_ns: int = 1_000) -> bytearray:
    medium = RecordingMedium(bytes(SIZE))
    store = LogStore.open(
        CONFIG, clock=SimClock(step_ns=step_ns), medium=medium, monotonic_ns=SimMonotonic()
    )
    for i in range(entries):
        store.append(node=f"node{i % 3}", event="diag.event", payload=bytes([i]) * payload)
    if close:
        store.close()
    else:
        store.commit()
    return bytearray(medium.image)


def _entry_spans(image: bytearray) -> list[tuple[int, int]]:
    """(start, end) of every entry in file order, newest group last."""
    return [(start, end) for _, start, end in logtamper.entry_spans(image)]


def _live_ranges(image: bytearray) -> list[tuple[int, int]]:
    """Bytes that carry meaning: headers of superblock and slots, group headers, entries."""
    view = open_view(image)
    geo = view.geo
    ranges = [(0, 96), (geo.page - 4, geo.page)]
    for slot in (0, 1):
        at = geo.slot_offset(slot)
        ranges += [
            (at, at + 128 + 16 * geo.n_groups),
            (at + geo.slot_bytes - 4, at + geo.slot_bytes),
        ]
    for group in view.live_groups():
        start = geo.group_offset(group)
        ranges.append((start, start + GROUP_HEADER_BYTES))
    ranges += _entry_spans(image)
    return ranges


def _faulted(image: bytearray) -> bool:
    return not verify_image(image).ok


def test_intact_store_verifies_clean() -> None:
    """An untouched, cleanly closed store has no fault and no note."""
    report = verify_image(_store(6, 24))
    assert (report.ok, report.exit_code, report.faults, report.notes) == (True, 0, [], [])


def test_every_single_bit_flip_is_reported() -> None:
    """Exhaustively: flipping any bit of any meaningful byte of a small store is a fault."""
    image = _store(5, 16)
    missed: list[tuple[int, int]] = []
    for start, end in _live_ranges(image):
        for offset in range(start, end):
            for bit in range(8):
                image[offset] ^= 1 << bit
                if not _faulted(image):
                    missed.append((offset, bit))
                image[offset] ^= 1 << bit
    assert missed == []


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=10**9), bit=st.integers(0, 7))
def test_bit_flips_anywhere_in_a_multi_group_store_are_reported(position: int, bit: int) -> None:
    """Anywhere in superblock, both slots (padding included) and every live group's entries."""
    image = _MULTI.copy()
    view = open_view(image)
    spans = [(0, view.geo.data_start), *_entry_spans(image)]
    spans += [(view.geo.group_offset(g), view.geo.group_offset(g) + 64) for g in view.live_groups()]
    total = sum(end - start for start, end in spans)
    position %= total
    for start, end in spans:
        if position < end - start:
            image[start + position] ^= 1 << bit
            break
        position -= end - start
    assert _faulted(image)


_MULTI = _store(60, 40)


def test_multi_group_store_spans_several_groups() -> None:
    """The hypothesis store above really crosses group boundaries."""
    assert len(open_view(_MULTI).live_groups()) >= 3


def _rebuild(image: bytearray, spans: list[tuple[int, int]], order: list[int]) -> bytearray:
    """The image with the entries of its first group rewritten in `order` (zero-filled after)."""
    out = bytearray(image)
    start = spans[0][0]
    end = max(e for s, e in spans if s < start + 4096 - GROUP_HEADER_BYTES)
    body = b"".join(bytes(image[spans[i][0] : spans[i][1]]) for i in order)
    out[start:end] = bytes(end - start)
    out[start : start + len(body)] = body
    return out


def test_deleting_any_entry_is_reported() -> None:
    """Removing any one entry (later entries shifted up) breaks the chain or the sequence."""
    image = _store(8, 20)
    spans = _entry_spans(image)
    for k in range(len(spans)):
        order = [i for i in range(len(spans)) if i != k]
        assert _faulted(_rebuild(image, spans, order)), k


def test_deleting_an_entry_of_an_older_group_of_an_unclean_store_is_reported() -> None:
    """Before recovery, too: a deletion in any group but the newest is a gap at the next group."""
    image = _store(60, 40, close=False)
    spans = _entry_spans(image)
    first_group = [i for i, (s, _) in enumerate(spans) if s < spans[0][0] + 4096 - 64]
    for k in first_group:
        order = [i for i in first_group if i != k]
        assert _faulted(_rebuild(image, spans, order)), k


def test_duplicating_any_entry_is_reported() -> None:
    """An entry repeated right after itself is reported."""
    image = _store(8, 20)
    spans = _entry_spans(image)
    for k in range(len(spans)):
        order = [*range(k + 1), k, *range(k + 1, len(spans))]
        assert _faulted(_rebuild(image, spans, order)), k


def test_reordering_any_two_neighbours_is_reported() -> None:
    """Swapping any two adjacent entries is reported."""
    image = _store(8, 20)
    spans = _entry_spans(image)
    for k in range(len(spans) - 1):
        order = list(range(len(spans)))
        order[k], order[k + 1] = order[k + 1], order[k]
        assert _faulted(_rebuild(image, spans, order)), k


def test_deleting_a_whole_group_is_a_gap() -> None:
    """A middle group forged into the free state leaves a sequence gap verify reports."""
    image = _MULTI.copy()
    view = open_view(image)
    middle = view.live_groups()[1]
    start = view.geo.group_offset(middle)
    image[start : start + view.geo.group_bytes] = bytes(view.geo.group_bytes)
    report = verify_image(image)
    assert not report.ok
    assert report.exit_code & FaultClass.DIGEST


def test_time_going_backwards_is_a_time_fault() -> None:
    """A clock stepped back between two entries sets the TIME class."""
    medium = RecordingMedium(bytes(SIZE))
    clock = SimClock()
    with LogStore.open(CONFIG, clock=clock, medium=medium, monotonic_ns=SimMonotonic()) as store:
        store.append(node="n", event="e", payload=b"\xc0")
        clock._now -= 1_000_000
        store.append(node="n", event="e", payload=b"\xc0")
    report = verify_image(medium.image)
    assert report.exit_code == FaultClass.TIME
    assert not report.ok


def test_torn_tail_of_an_unclean_store_is_a_note_not_a_fault() -> None:
    """After a crash a half-written entry after the last commit is noted as a torn tail, and
    every entry before it verifies."""
    medium = RecordingMedium(bytes(SIZE))
    store = LogStore.open(CONFIG, clock=SimClock(), medium=medium, monotonic_ns=SimMonotonic())
    for i in range(6):
        store.append(node="n", event="diag.event", payload=bytes([i]) * 20)
    store.commit()
    store.append(node="n", event="diag.event", payload=bytes(20))
    image = bytearray(medium.image)
    start, end = _entry_spans(image)[-1]
    image[start + (end - start) // 2 : end] = bytes(end - start - (end - start) // 2)
    report = verify_image(image)
    assert report.ok and not report.clean
    assert (report.verdict, report.torn_after, report.last_seq) == ("torn", 7, 7)
    assert any("torn tail after seq 7" in note for note in report.notes)


def test_damage_to_a_committed_entry_of_the_newest_group_is_a_fault() -> None:
    """In a store that was not closed cleanly, an entry the commit record names as durable
    is checked in full: damage to it is a fault with its range, not a torn tail."""
    image = _store(6, 20, close=False)
    start, _end = _entry_spans(image)[-2]
    image[start + 120] ^= 1
    report = verify_image(image)
    assert not report.ok and report.verdict == "damaged"
    assert report.exit_code == FaultClass.DIGEST
    assert report.faults[0].seq == 6


def test_metadata_fixed_fields_are_all_sealed() -> None:
    """The fixed metadata header lies inside the region the bit-flip test walks."""
    assert META_FIXED.size <= 128


def test_verify_store_reads_a_file(tmp_path: Path) -> None:
    """verify_store maps a file read-only and reports on it."""
    path = tmp_path / "s.vlog"
    path.write_bytes(_store(3, 8))
    assert verify_store(str(path)).entries == 4


def test_verify_of_a_file_that_is_no_store_is_unreadable(tmp_path: Path) -> None:
    """Random bytes are reported UNREADABLE (exit 1)."""
    path = tmp_path / "junk"
    path.write_bytes(b"\x01" * 8192)
    assert verify_store(str(path)).exit_code == FaultClass.UNREADABLE
