"""The logger's sealed store: a wear-levelled write-ahead ring of chained, digested entries.

Entries are stamped from the PTP hardware clock, sealed with CRC32C(payload), SHA-256(timestamp
|| payload) and a chain digest over the previous entry, and appended to page groups of an mmap'd
file. Group commit msyncs them within `commit_latency_ms`; after a crash the store is recovered
by scanning. `docs/log-store.md` documents the layout, the retention policy and verify.

`LogStore` puts three parts together: `_recovery` (open, create, resume, recover), `_writer`
(the append and roll path) and `_commit` (group commit, on a committer thread).
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, Protocol

import msgspec

from vigil.bus.closing import Closing
from vigil.bus.ptp import ClockConfig, ClockOffset, ClockSource, PtpClock
from vigil.nodes.logger._audit import AUDIT_EVENT, pack_audit
from vigil.nodes.logger._commit import Committer
from vigil.nodes.logger._config import StoreConfig, StoreStats
from vigil.nodes.logger._errors import StoreClosed, StoreFull, StoreIOError
from vigil.nodes.logger._format import (
    Entry,
    EntryTooLarge,
    RecordRefused,
    StoreLayoutError,
)
from vigil.nodes.logger._medium import Medium, MmapMedium
from vigil.nodes.logger._recovery import attach
from vigil.nodes.logger._scan import (
    Fault,
    FaultClass,
    VerifyReport,
    iter_entries,
    open_view,
    verify_image,
)
from vigil.nodes.logger._sealer import Record, SealFn, seal, seal_python
from vigil.nodes.logger._wear import NoHealthyGroup
from vigil.nodes.logger._writer import GroupWriter, export_watermark_path
from vigil.schemas.audit import AuditId

__all__ = [
    "Clock",
    "Entry",
    "EntryTooLarge",
    "Fault",
    "FaultClass",
    "LogStore",
    "NoHealthyGroup",
    "Record",
    "RecordRefused",
    "StoreClosed",
    "StoreConfig",
    "StoreFull",
    "StoreIOError",
    "StoreLayoutError",
    "StoreStats",
    "VerifyReport",
    "export_watermark_path",
    "read_entries",
    "verify_store",
]

# Events the store writes itself, so an assessor sees which clock stamped the run and when the
# store was recovered after a crash.
CLOCK_EVENT: Final = "log.clock"
RECOVERY_EVENT: Final = "log.recovered"


class Clock(Protocol):
    """What the store needs of a clock (`PtpClock`, or a test's stand-in for a PHC)."""

    source: ClockSource
    device: str

    def now_ns(self) -> int:
        """The current time in nanoseconds."""
        ...

    def offset(self, samples: int = 5) -> ClockOffset:
        """The clock's offset from the system clock."""
        ...


# implements: SR-LOG-002
class LogStore(Closing):
    """An open store; use `LogStore.open(config)` as a context manager.

    Not thread-safe: one thread appends (the committer thread only msyncs).
    """

    def __init__(
        self,
        config: StoreConfig,
        medium: Medium,
        clock: Clock,
        *,
        owns_medium: bool,
        owns_clock: bool,
        monotonic_ns: Callable[[], int],
        sealer: SealFn,
    ) -> None:
        self._config = config
        self._medium = medium
        self._clock = clock
        self._owns_medium = owns_medium
        self._owns_clock = owns_clock
        self._mono = monotonic_ns
        self._seal = sealer
        self._now: Callable[[], int] = clock.read if isinstance(clock, PtpClock) else clock.now_ns
        self.stats = StoreStats(
            clock_source=clock.source.name,
            sealer="python" if sealer is seal_python else "compiled",
        )
        self._closed = False
        self._committer = Committer(
            medium,
            self.stats,
            latency_ns=int(config.commit_latency_ms * 1_000_000),
            monotonic_ns=monotonic_ns,
            background=config.background_commit,
        )
        # Set by _attach.
        self._writer: GroupWriter

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        config: StoreConfig,
        *,
        clock: Clock | None = None,
        medium: Medium | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        sealer: SealFn = seal,
    ) -> LogStore:
        """Create the store, or open and recover it; stamps a clock entry before returning.

        `clock` and `medium` default to the configured PHC (or fallback) and the mmap'd file;
        the store closes only what it opened itself. `sealer` is the sealing loop: the
        compiled one where it is built (`_sealer.SEALER`), or the Python reference.
        """
        owns_clock = clock is None
        owns_medium = medium is None
        opened_clock: PtpClock | None = None
        opened_medium: Medium | None = None
        try:
            if clock is None:
                opened_clock = PtpClock.open(
                    ClockConfig(ptp_device=config.ptp_device, fallback=config.fallback)
                )
                clock = opened_clock
            if medium is None:
                opened_medium = MmapMedium(config.path, config.size_bytes)
                medium = opened_medium
            store = cls(
                config, medium, clock, owns_medium=owns_medium, owns_clock=owns_clock,
                monotonic_ns=monotonic_ns, sealer=sealer,
            )  # fmt: skip
            store._attach()
        except BaseException:
            if opened_medium is not None:
                opened_medium.close()
            if opened_clock is not None:
                opened_clock.close()
            raise
        try:
            store._start()
        except BaseException:
            store.close()
            raise
        return store

    def _attach(self) -> None:
        found = attach(self._medium, self._config)
        self.stats.recovered = found.recovered
        self._writer = GroupWriter(
            self._config, self._medium, found, self._committer, self.stats,
            now=self._now, clock_byte=int(self._clock.source), monotonic_ns=self._mono,
            sealer=self._seal,
        )  # fmt: skip
        self._writer.begin()

    def _start(self) -> None:
        self._committer.start()
        offset = self._clock.offset()
        record = {
            "source": self._clock.source.name,
            "device": self._clock.device,
            "offset_ns": offset.offset_ns,
            "delay_ns": offset.delay_ns,
            "method": offset.method,
        }
        self.append(node="logger", event=CLOCK_EVENT, payload=msgspec.msgpack.encode(record))
        if self.stats.recovered:
            self.append(
                node="logger",
                event=RECOVERY_EVENT,
                payload=msgspec.msgpack.encode({"resumed_after_seq": self._writer.seq - 1}),
            )
        self.commit()

    # -- appending -------------------------------------------------------------------------

    # implements: SR-LOG-001
    def append(self, *, node: str, event: str | int, payload: bytes, trace_id: bytes = b"") -> int:
        """Seal and append one entry; returns its sequence number.

        `event` is the bus schema id (or an integer code, stored as its decimal string);
        `payload` is MessagePack bytes; `trace_id` is 16 bytes or empty. The entry is durable
        once `stats.committed_seq` reaches the returned number.
        """
        return self.append_many(((node, event, payload, trace_id),))

    # implements: SR-LOG-001
    def append_many(self, records: Sequence[Record]) -> int:
        """Seal and append a burst of (node, event, payload, trace_id) records in order.

        Each entry gets its own timestamp, seals and chain link exactly as `append` would
        give it; the burst is sealed in one call of the sealing loop and copied into the
        medium in one write per page group. Returns the last sequence number (the current one
        when `records` is empty). A record that is refused (a bad trace id or name) raises
        after every record before it is stored.
        """
        if self._closed:
            raise StoreClosed("append after close")
        return self._writer.append_many(records)

    def audit_record(
        self,
        event: AuditId,
        *,
        instance: int,
        payload: bytes = b"",
        node: str = "logger",
        trace_id: bytes = b"",
    ) -> Record:
        """A binary audit record (see `_audit`) as a record of event `audit.record`, stamped now,
        for `append_many`.

        The entry's MessagePack payload is one `bin 8` holding the 46-byte record, so the record
        sits at payload offset 2 and `audit_view(entry.payload, 2)` reads it in place.
        """
        record = pack_audit(self._now(), event, instance, payload)
        return (node, AUDIT_EVENT, msgspec.msgpack.encode(record), trace_id)

    # -- committing ------------------------------------------------------------------------

    def poll_timeout_ms(self) -> int | None:
        """Milliseconds until the next group commit is due; None when nothing is pending."""
        return self._writer.poll_timeout_ms()

    def commit(self) -> None:
        """Make every appended entry durable (msync) before returning."""
        if self._closed:
            raise StoreClosed("commit after close")
        self._writer.commit()

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Commit, record a clean close in both metadata slots, release what the store opened.

        Idempotent. When a commit fails the store is left marked unclean, so the next open
        recovers it by scanning.
        """
        if self._closed:
            return
        try:
            self.commit()
            self._writer.record_clean_close()
        finally:
            self._closed = True
            self._committer.stop()
            if self._owns_medium:
                self._medium.close()
            if self._owns_clock and isinstance(self._clock, PtpClock):
                self._clock.close()


def verify_store(
    path: str | os.PathLike[str], *, allow_fallback_clock: bool = False
) -> VerifyReport:
    """Verify a store file: every seal, link, sequence number, timestamp and the clock source."""
    with _read_only(path) as image:
        return verify_image(
            image, allow_fallback_clock=allow_fallback_clock, page_hint=mmap.PAGESIZE
        )


def read_entries(path: str | os.PathLike[str]) -> Iterator[Entry]:
    """Every entry whose seals hold, oldest first (what verify would accept)."""
    with _read_only(path) as image:
        yield from iter_entries(open_view(image, mmap.PAGESIZE))


class _read_only:
    """A read-only mapping of a store file, closed on every path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._map: mmap.mmap | None = None

    def __enter__(self) -> mmap.mmap:
        with open(self._path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise StoreLayoutError(f"{self._path} is empty")
            self._map = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        return self._map

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()
