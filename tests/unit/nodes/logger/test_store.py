"""The sealed store: append, read back, commit timing, reopen, recovery, retention, bad groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from vigil.bus.ptp import ClockSource
from vigil.errors import IntegrityError
from vigil.nodes.logger._medium import MmapMedium
from vigil.nodes.logger._scan import open_view
from vigil.nodes.logger._sealer import SEALER, SealFn, seal, seal_python
from vigil.nodes.logger.store import (
    CLOCK_EVENT,
    EntryTooLarge,
    LogStore,
    StoreConfig,
    StoreFull,
    StoreLayoutError,
    export_watermark_path,
    read_entries,
    verify_store,
)
from vigil.testing.crashsim import RecordingMedium, SimClock, SimMonotonic


def _user_entries(path: str) -> list[tuple[int, str, str, bytes, bytes]]:
    return [
        (e.seq, e.node, e.event, e.trace_id, e.payload)
        for e in read_entries(path)
        if not e.event.startswith("log.")
    ]


def test_appended_entries_read_back_in_order(
    small_config: StoreConfig, clock: SimClock, mono: SimMonotonic
) -> None:
    """Every field appended is read back as written, in sequence order."""
    trace = bytes(range(16))
    with LogStore.open(small_config, clock=clock, monotonic_ns=mono) as store:
        first = store.append(node="ingest", event="diag.event", payload=b"\x80", trace_id=trace)
        second = store.append(node="worker-0", event=2047, payload=b"\xa1x")
    assert second == first + 1
    assert _user_entries(small_config.path) == [
        (first, "ingest", "diag.event", trace, b"\x80"),
        (second, "worker-0", "2047", b"", b"\xa1x"),
    ]


def test_the_stamping_clock_is_recorded(small_config: StoreConfig, clock: SimClock) -> None:
    """The first entry of a session names the clock source, device and PHC-system offset."""
    with LogStore.open(small_config, clock=clock):
        pass
    entry = next(e for e in read_entries(small_config.path) if e.event == CLOCK_EVENT)
    record = msgspec.msgpack.decode(entry.payload)
    assert (record["source"], record["device"], record["method"]) == (
        "PHC",
        "/dev/ptp-sim",
        "ioctl",
    )
    assert entry.clock_source is ClockSource.PHC


def test_fallback_clock_is_flagged_by_verify(small_config: StoreConfig) -> None:
    """A store stamped by a fallback clock verifies intact but carries the CLOCK flag."""
    config = msgspec.structs.replace(small_config, ptp_device="/dev/ptp-does-not-exist")
    with LogStore.open(config) as store:
        store.append(node="ingest", event="diag.event", payload=b"\xc0")
    report = verify_store(config.path)
    assert report.ok
    assert report.exit_code == 64
    assert verify_store(config.path, allow_fallback_clock=True).exit_code == 0


def test_clean_reopen_continues_the_chain(
    small_config: StoreConfig, clock: SimClock, mono: SimMonotonic
) -> None:
    """Closing and reopening continues sequence and chain; verify finds nothing."""
    for _ in range(3):
        with LogStore.open(small_config, clock=clock, monotonic_ns=mono) as store:
            for _ in range(10):
                store.append(node="n", event="e", payload=b"\x90")
    report = verify_store(small_config.path)
    assert report.ok and report.clean and report.exit_code == 0
    assert report.entries == 33


def test_commit_comes_due_after_the_configured_latency(
    small_config: StoreConfig, clock: SimClock
) -> None:
    """poll_timeout_ms counts down from commit_latency_ms; reaching it commits on append."""
    mono = SimMonotonic(step_ns=1_000_000)
    with LogStore.open(small_config, clock=clock, monotonic_ns=mono) as store:
        assert store.poll_timeout_ms() is None
        seq = store.append(node="n", event="e", payload=b"\xc0")
        assert store.stats.committed_seq < seq
        timeout = store.poll_timeout_ms()
        assert timeout is not None and 0 < timeout <= 5
        for _ in range(5):
            store.append(node="n", event="e", payload=b"\xc0")
        assert store.stats.committed_seq >= seq


def test_commit_makes_everything_durable(
    small_config: StoreConfig, clock: SimClock, mono: SimMonotonic
) -> None:
    """An explicit commit raises committed_seq to the last appended entry."""
    with LogStore.open(small_config, clock=clock, monotonic_ns=mono) as store:
        seq = store.append(node="n", event="e", payload=b"\xc0")
        store.commit()
        assert store.stats.committed_seq == seq
        assert store.poll_timeout_ms() is None


def test_background_commit_reaches_the_last_entry(store_path: str, clock: SimClock) -> None:
    """With the committer thread, commit() returns once the last entry is msynced."""
    config = StoreConfig(path=store_path, size_bytes=1 << 20, group_bytes=64 * 1024)
    with LogStore.open(config, clock=clock) as store:
        for _ in range(2000):
            seq = store.append(node="n", event="e", payload=bytes(100))
        store.commit()
        assert store.stats.committed_seq == seq
    assert verify_store(store_path).ok


def test_entry_larger_than_a_group_is_refused(small_config: StoreConfig, clock: SimClock) -> None:
    """A payload that cannot fit one group raises EntryTooLarge."""
    with LogStore.open(small_config, clock=clock) as store, pytest.raises(EntryTooLarge):
        store.append(node="n", event="e", payload=bytes(5000))


def test_trace_id_must_be_16_bytes(small_config: StoreConfig, clock: SimClock) -> None:
    """A trace id of the wrong length is a ValueError, not a silent truncation."""
    with LogStore.open(small_config, clock=clock) as store, pytest.raises(ValueError):
        store.append(node="n", event="e", payload=b"\xc0", trace_id=b"short")


def test_ring_overwrites_the_oldest_group_and_stays_contiguous(
    small_config: StoreConfig, clock: SimClock, mono: SimMonotonic
) -> None:
    """Past capacity the oldest entries go first; what remains is one verified run to the end."""
    with LogStore.open(small_config, clock=clock, monotonic_ns=mono) as store:
        for _ in range(2000):
            last = store.append(node="n", event="e", payload=bytes(200))
        oldest = store.stats.oldest_seq
    seqs = [e.seq for e in read_entries(small_config.path)]
    assert seqs[0] == oldest > 1
    assert seqs == list(range(oldest, last + 1))
    assert verify_store(small_config.path).ok


def test_exported_retention_waits_for_the_export(
    small_config: StoreConfig, clock: SimClock, mono: SimMonotonic
) -> None:
    """With retention 'exported' the ring refuses to overwrite until the watermark covers it."""
    config = msgspec.structs.replace(small_config, retention="exported")
    with LogStore.open(config, clock=clock, monotonic_ns=mono) as store:
        with pytest.raises(StoreFull):
            for _ in range(2000):
                store.append(node="n", event="e", payload=bytes(200))
        export_watermark_path(config.path).write_text(f"{store.stats.last_seq}\n")
        store.append(node="n", event="e", payload=bytes(200))
    assert verify_store(config.path).ok


def test_writes_skip_a_group_that_does_not_keep_data(store_path: str, clock: SimClock) -> None:
    """A group whose writes do not stick is marked bad and never used; entries go elsewhere."""
    config = StoreConfig(
        path=store_path, size_bytes=64 * 1024, group_bytes=4096, background_commit=False
    )

    class FlakyMedium(RecordingMedium):
        def write(self, offset: int, data: bytes) -> None:
            if self.bad_start <= offset < self.bad_start + 4096:
                data = bytes(len(data))
            super().write(offset, data)

    medium = FlakyMedium(bytes(64 * 1024))
    medium.bad_start = 1 << 30
    with LogStore.open(config, clock=clock, medium=medium):
        pass
    medium.bad_start = open_view(medium.image).geo.group_offset(1)
    with LogStore.open(config, clock=clock, medium=medium) as store:
        for _ in range(100):
            store.append(node="n", event="e", payload=bytes(200))
        assert store.stats.bad_groups == 1
    Path(store_path).write_bytes(bytes(medium.image))
    assert verify_store(store_path).ok


def test_recovery_after_sigkill_keeps_committed_entries(store_path: str) -> None:
    """A writer SIGKILLed between commits loses nothing it committed; the next open recovers."""
    script = f"""
import os, signal
from vigil.nodes.logger.store import LogStore, StoreConfig
config = StoreConfig(path={store_path!r}, size_bytes=1 << 20, group_bytes=64 * 1024,
                     commit_latency_ms=60000.0)
store = LogStore.open(config)
for i in range(500):
    store.append(node="w", event="e", payload=i.to_bytes(4, "little"))
store.commit()
print(store.stats.committed_seq, flush=True)
for i in range(500, 700):
    store.append(node="w", event="e", payload=i.to_bytes(4, "little"))
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL
    committed = int(done.stdout.split()[0])
    config = StoreConfig(path=store_path, size_bytes=1 << 20, group_bytes=64 * 1024)
    with LogStore.open(config) as store:
        assert store.stats.recovered
    payloads = [
        int.from_bytes(e.payload, "little") for e in read_entries(store_path) if e.node == "w"
    ]
    assert payloads[: committed - 1] == list(range(committed - 1))
    report = verify_store(store_path, allow_fallback_clock=True)
    assert report.ok and report.exit_code == 0


def test_a_file_that_is_not_a_store_is_refused(store_path: str, clock: SimClock) -> None:
    """Opening some other file raises StoreLayoutError and leaves it as it was."""
    Path(store_path).write_bytes(b"not a log store" * 5000)
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with pytest.raises(StoreLayoutError):
        LogStore.open(config, clock=clock)
    assert Path(store_path).read_bytes().startswith(b"not a log store")


def test_damaged_superblock_over_live_data_is_refused(
    small_config: StoreConfig, clock: SimClock
) -> None:
    """A store whose superblock is damaged is not re-created over its entries."""
    with LogStore.open(small_config, clock=clock) as store:
        store.append(node="n", event="e", payload=b"\xc0")
    raw = bytearray(Path(small_config.path).read_bytes())
    raw[3] ^= 1
    Path(small_config.path).write_bytes(raw)
    with pytest.raises(IntegrityError):
        LogStore.open(small_config, clock=clock)


def test_append_after_close_is_refused(small_config: StoreConfig, clock: SimClock) -> None:
    """A closed store raises StoreClosed rather than writing to an unmapped file."""
    store = LogStore.open(small_config, clock=clock)
    store.close()
    store.close()
    with pytest.raises(Exception, match="after close"):
        store.append(node="n", event="e", payload=b"")


def test_store_config_rejects_a_zero_latency() -> None:
    """commit_latency_ms must be positive."""
    with pytest.raises(ValueError):
        StoreConfig(path="x", commit_latency_ms=0)


def test_store_file_is_preallocated(small_config: StoreConfig, clock: SimClock) -> None:
    """The file is created at its full size, so a full disk cannot fault a later write."""
    with LogStore.open(small_config, clock=clock):
        pass
    assert os.path.getsize(small_config.path) == 64 * 1024


@pytest.mark.parametrize("sealer", [seal_python, seal], ids=["python", SEALER])
def test_a_burst_spanning_groups_reads_back_like_single_appends(
    small_config: StoreConfig, clock: SimClock, mono: SimMonotonic, sealer: SealFn
) -> None:
    """A burst larger than a group is sealed and chained exactly like one append per entry,
    by either sealing loop: every field reads back in order across the group boundaries, and
    the store verifies."""
    trace = bytes(range(16))
    records = [
        (
            f"n{i % 3}",
            "diag.event" if i % 2 else 2047,
            bytes([i % 256]) * (i % 300),
            trace * (i % 2),
        )
        for i in range(60)
    ]
    with LogStore.open(small_config, clock=clock, monotonic_ns=mono, sealer=sealer) as store:
        first = store.append(node="single", event="e", payload=b"\xc0")
        last = store.append_many(records)
        assert store.stats.groups_opened > 2
        tail = store.append(node="single", event="e", payload=b"\xc3")
    assert (last, tail) == (first + 60, first + 61)
    assert _user_entries(small_config.path) == [
        (first, "single", "e", b"", b"\xc0"),
        *[
            (first + 1 + i, node, str(event), trace_id, payload)
            for i, (node, event, payload, trace_id) in enumerate(records)
        ],
        (tail, "single", "e", b"", b"\xc3"),
    ]
    assert verify_store(small_config.path).ok


def test_a_refused_record_keeps_the_burst_before_it(
    small_config: StoreConfig, clock: SimClock
) -> None:
    """A bad trace id in the middle of a burst raises; the records before it are stored
    and chained, nothing after it is, and the store goes on from there."""
    good = ("n", "e", b"\xc0", b"")
    with LogStore.open(small_config, clock=clock) as store:
        before = store.stats.last_seq
        with pytest.raises(ValueError, match="trace_id"):
            store.append_many([good, good, ("n", "e", b"\xc2", b"short"), good])
        assert store.stats.last_seq == before + 2
        assert store.append_many([]) == before + 2
        store.append_many([good, ("m", "e", memoryview(b"\xc3"), b"")])  # a view is stored too
    assert [e.payload for e in read_entries(small_config.path) if e.node in {"n", "m"}] == [
        b"\xc0",
        b"\xc0",
        b"\xc0",
        b"\xc3",
    ]
    assert verify_store(small_config.path).ok


def test_the_mapping_shows_what_the_medium_wrote(store_path: str) -> None:
    """Large writes go through pwrite, small ones through the mapping, reads through the
    mapping: one page cache, so every write is visible at once; a write outside the file is
    refused."""
    medium = MmapMedium(store_path, 64 * 1024)
    burst = bytes(range(256)) * 40  # over a page: pwrite
    try:
        medium.write(4095, b"seal")  # across a page boundary, through the mapping
        medium.write(8190, burst)
        assert bytes(medium.image[4095:4099]) == b"seal"
        assert bytes(medium.image[8190 : 8190 + len(burst)]) == burst
        with pytest.raises(ValueError, match="outside"):
            medium.write(64 * 1024 - 2, b"four")
    finally:
        medium.close()
