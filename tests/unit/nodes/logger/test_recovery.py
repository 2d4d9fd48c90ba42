"""Recovery keeps the durability contract: what it adopts is made durable first, durable entries
are never dropped, restarts cost no history, and a failed start is never a clean close."""

from __future__ import annotations

import msgspec
import pytest

from vigil.bus.ptp import ClockOffset
from vigil.nodes.logger._format import Entry
from vigil.nodes.logger._verify import FaultClass, verify_image
from vigil.nodes.logger.store import (
    RECOVERY_EVENT,
    LogStore,
    StoreConfig,
    export_watermark_path,
)
from vigil.testing import logtamper
from vigil.testing.crashsim import RecordingMedium, SimClock, SimMonotonic, power_cuts

pytestmark = pytest.mark.verifies("SR-LOG-002")

SIZE = 64 * 1024
CONFIG = StoreConfig(path="sim", size_bytes=SIZE, group_bytes=4096, background_commit=False)
# Room for a thousand short sessions, in 64 groups.
LARGE = msgspec.structs.replace(CONFIG, size_bytes=1 << 20, group_bytes=16384)


def _open(medium: RecordingMedium, clock: SimClock, config: StoreConfig = CONFIG) -> LogStore:
    return LogStore.open(config, clock=clock, medium=medium, monotonic_ns=SimMonotonic())


def _append(store: LogStore, count: int, size: int = 40) -> int:
    last = 0
    for i in range(count):
        last = store.append(node="n", event="diag.event", payload=bytes([i % 256]) * size)
    return last


def test_entries_a_restart_adopts_from_the_page_cache_are_made_durable_first() -> None:
    """A writer killed with appends only in the page cache; the next one adopts them, goes on
    and commits. Whatever the disk then loses of what was never synced, no entry the second
    writer committed is missing and verify finds no gap."""
    medium, clock = RecordingMedium(bytes(SIZE)), SimClock()
    patient = msgspec.structs.replace(CONFIG, commit_latency_ms=60_000.0)
    first = _open(medium, clock, patient)
    _append(first, 8)
    first.commit()
    _append(first, 3)  # killed here: these three are in the page cache only
    assert first.stats.committed_seq < first.stats.last_seq
    second = _open(medium, clock, patient)
    committed = _append(second, 5)
    second.commit()
    assert second.stats.committed_seq == committed
    images = [cut for cut in power_cuts(medium) if cut.index == len(medium.ops)]
    for cut in images:
        accepted: list[Entry] = []
        report = verify_image(cut.image, on_entry=accepted.append)
        assert report.ok, (cut.variant, report.faults)
        assert accepted[-1].seq >= committed, cut.variant


def _unclean() -> tuple[bytearray, list[tuple[int, int, int]]]:
    medium = RecordingMedium(bytes(SIZE))
    store = _open(medium, SimClock())
    _append(store, 12)
    store.commit()  # every entry durable; the store is not closed
    image = bytearray(medium.image)
    return image, logtamper.entry_spans(image)


def _newest_group_spans(image: bytearray, spans: list[tuple[int, int, int]]) -> list[int]:
    newest = max(s for _, s, _ in spans) // 4096
    return [i for i, (_, s, _) in enumerate(spans) if s // 4096 == newest]


@pytest.mark.parametrize("edit", ["flip", "delete", "swap", "duplicate", "truncate"])
def test_edits_to_durable_entries_of_an_unclean_newest_group_are_faults(edit: str) -> None:
    """In the newest group of a store that was not closed cleanly, every entry the commit
    record names as durable is checked in full: a flipped bit, a deletion, a swap, a
    duplicate or a cut tail is a fault, not a note."""
    image, spans = _unclean()
    index = _newest_group_spans(image, spans)[1]
    _, start, end = spans[index]
    _, next_start, next_end = spans[index + 1]
    body = bytes(image[start:end])
    following = bytes(image[next_start:next_end])
    tail_end = spans[-1][2]
    if edit == "flip":
        image[start + 60] ^= 4
    elif edit == "delete":
        rest = bytes(image[end:tail_end])
        image[start:tail_end] = rest + bytes(end - start)
    elif edit == "swap":
        image[start : start + len(following)] = following
        image[start + len(following) : next_end] = body
    elif edit == "duplicate":
        rest = bytes(image[start:tail_end])
        image[start : tail_end + len(body)] = body + rest
    else:
        image[start:tail_end] = bytes(tail_end - start)
    report = verify_image(image)
    assert not report.ok and report.verdict == "damaged", report


def test_a_restart_keeps_durable_entries_after_damage_and_seals_what_it_found() -> None:
    """A damaged durable entry in the newest group does not make recovery drop it and every
    entry after it: appends resume after the last durable entry, `log.recovered` names the
    damaged range, and verify keeps reporting the damage."""
    medium = RecordingMedium(bytes(SIZE))
    clock = SimClock()
    store = _open(medium, clock)
    last = _append(store, 12)
    store.commit()
    spans = logtamper.entry_spans(medium.image)
    seq, start, _ = spans[_newest_group_spans(medium.image, spans)[1]]
    medium.image[start + 60] ^= 4
    with _open(medium, clock) as again:
        again.append(node="n", event="diag.event", payload=b"\xc0")
    accepted: list[tuple[int, str, bytes]] = []
    report = verify_image(
        medium.image, on_entry=lambda e: accepted.append((e.seq, e.event, e.payload))
    )
    assert report.exit_code == FaultClass.DIGEST
    assert [f.seq for f in report.faults] == [seq]
    assert {s for s, _, _ in accepted} >= set(range(seq + 1, last + 1))
    recovered = next(p for _, e, p in accepted if e == RECOVERY_EVENT)
    damaged = msgspec.msgpack.decode(recovered)["damaged"]
    assert (damaged["first_seq"], damaged["last_seq"]) == (seq, last)


@pytest.mark.parametrize("ending", ["kill", "close"])
def test_a_thousand_restarts_keep_the_history(ending: str) -> None:
    """1,000 restarts, each appending one entry and ending in a kill or a clean close, spend
    no group each: in a store with room for what they wrote (but 64 groups) the first entry is
    still retained and the store verifies."""
    medium, clock = RecordingMedium(bytes(LARGE.size_bytes)), SimClock()
    for _ in range(1000):
        store = _open(medium, clock, LARGE)
        store.append(node="n", event="diag.event", payload=b"\xc0")
        if ending == "close":
            store.close()
    report = verify_image(medium.image)
    assert report.ok and report.first_seq == 1, report.faults
    assert report.entries >= 2000  # each session: its clock entry, its entry (and a recovery)


def test_exported_retention_starts_while_it_holds_few_entries() -> None:
    """Under retention 'exported' a store of 64 groups that holds a few hundred short entries
    starts again and again (kill after kill) without raising StoreFull."""
    config = msgspec.structs.replace(LARGE, retention="exported", path="/nonexistent/sim")
    medium, clock = RecordingMedium(bytes(config.size_bytes)), SimClock()
    for _ in range(200):
        store = _open(medium, clock, config)
        store.append(node="n", event="diag.event", payload=b"\xc0")
    assert not export_watermark_path(config.path).exists()
    assert verify_image(medium.image).ok


class _FailingClock(SimClock):
    def offset(self, samples: int = 5) -> ClockOffset:
        raise OSError("PTP_SYS_OFFSET failed")


def test_a_failed_start_never_marks_the_store_cleanly_closed() -> None:
    """When the start fails after the store was attached, the store is left as not closed
    cleanly: verify finds it open and intact, and the next start recovers it."""
    medium, clock = RecordingMedium(bytes(SIZE)), SimClock()
    with _open(medium, clock) as store:
        _append(store, 5)
    with pytest.raises(OSError, match="PTP_SYS_OFFSET"):
        _open(medium, _FailingClock())
    report = verify_image(medium.image)
    assert (report.ok, report.verdict) == (True, "open"), report.faults
    with _open(medium, clock) as store:
        assert store.stats.recovered
    assert verify_image(medium.image).verdict == "clean"
