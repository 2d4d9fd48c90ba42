"""The logger's sealed store: a wear-levelled write-ahead ring of chained, digested entries.

Entries are stamped from the PTP hardware clock, sealed with CRC32C(payload), SHA-256(timestamp
|| payload) and a chain digest over the previous entry, and appended to page groups of an mmap'd
file. Group commit msyncs them within `commit_latency_ms`; after a crash the store is recovered
by scanning. `docs/log-store.md` documents the layout, the retention policy and verify.

`LogStore` puts three parts together: `_recovery` (open, create, resume, recover), `_writer`
(the append and roll path) and `_commit` (group commit, on a committer thread).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, Protocol

import msgspec

from vigil.bus.closing import Closing
from vigil.bus.ptp import ClockConfig, ClockOffset, ClockSource, PtpClock
from vigil.nodes.logger._audit import AUDIT_EVENT, pack_audit
from vigil.nodes.logger._checkpoint import (
    Checkpoint,
    CheckpointError,
    LogKeyError,
    Signer,
    Verifier,
    generate_key,
    load_signer,
    load_verifier,
    parse_note,
)
from vigil.nodes.logger._commit import Committer
from vigil.nodes.logger._config import StoreConfig, StoreStats
from vigil.nodes.logger._errors import StoreClosed, StoreFull, StoreIOError, StoreNoSpace
from vigil.nodes.logger._format import (
    Entry,
    EntryTooLarge,
    RecordRefused,
    StoreLayoutError,
)
from vigil.nodes.logger._medium import Medium, MmapMedium
from vigil.nodes.logger._recovery import Attached, attach
from vigil.nodes.logger._scan import StoreView
from vigil.nodes.logger._sealer import Record, SealFn, seal, seal_python
from vigil.nodes.logger._snapshot import MappedStore, read_snapshot
from vigil.nodes.logger._verify import (
    ExternalCheckpoint,
    Fault,
    FaultClass,
    Verdict,
    VerifyReport,
    iter_entries,
    verify_view,
)
from vigil.nodes.logger._wear import NoHealthyGroup
from vigil.nodes.logger._writer import GroupWriter, export_watermark_path
from vigil.schemas.audit import AuditId

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Clock",
    "Entry",
    "EntryTooLarge",
    "ExternalCheckpoint",
    "Fault",
    "FaultClass",
    "LogKeyError",
    "LogStore",
    "NoHealthyGroup",
    "Record",
    "RecordRefused",
    "Signer",
    "StoreClosed",
    "StoreConfig",
    "StoreFull",
    "StoreIOError",
    "StoreLayoutError",
    "StoreNoSpace",
    "StoreStats",
    "Verdict",
    "Verifier",
    "VerifyReport",
    "checkpoint_path",
    "export_watermark_path",
    "generate_key",
    "load_signer",
    "load_verifier",
    "parse_note",
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
        # Set by _attach.
        self._committer: Committer
        self._writer: GroupWriter
        self._found: Attached

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
        signer: Signer | None = None,
        sidecar: Callable[[bytes], None] | None = None,
    ) -> LogStore:
        """Create the store, or open and recover it; stamps a clock entry before returning.

        `clock` and `medium` default to the configured PHC (or fallback) and the mmap'd file;
        the store closes only what it opened itself. `sealer` is the sealing loop: the
        compiled one where it is built (`_sealer.SEALER`), or the Python reference. `signer`
        signs the checkpoints (default: `config.signing_key`, if set); `sidecar` receives the
        newest checkpoint note after each commit (default: the file `PATH.checkpoint` when
        the store opened its own file).
        """
        owns_clock = clock is None
        owns_medium = medium is None
        opened_clock: PtpClock | None = None
        opened_medium: Medium | None = None
        if signer is None and config.signing_key:
            signer = load_signer(config.signing_key)
        if sidecar is None and owns_medium:
            sidecar = _SidecarFile(checkpoint_path(config.path))
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
            store._attach(signer, sidecar)
        except BaseException:
            if opened_medium is not None:
                opened_medium.close()
            if opened_clock is not None:
                opened_clock.close()
            raise
        try:
            store._start()
        except BaseException:
            # A start that failed is not a clean close: the next open recovers.
            store._release()
            raise
        return store

    def _attach(self, signer: Signer | None, sidecar: Callable[[bytes], None] | None) -> None:
        found = attach(self._medium, self._config)
        self._found = found
        self.stats.recovered = found.recovered
        self.stats.key_id = signer.key_id.hex() if signer is not None else ""
        config = self._config
        self._committer = Committer(
            self._medium, self.stats, geo=found.geo, store_id=found.store_id,
            generation=found.commit.generation + 1 if found.commit is not None else 1,
            signer=signer, sidecar=sidecar, latency_ns=int(config.commit_latency_ms * 1e6),
            monotonic_ns=self._mono, background=config.background_commit,
        )  # fmt: skip
        self._writer = GroupWriter(
            self._config, self._medium, found, self._committer, self.stats,
            now=self._now, clock_byte=int(self._clock.source), monotonic_ns=self._mono,
            sealer=self._seal,
        )  # fmt: skip
        self._writer.begin(found)

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
                payload=msgspec.msgpack.encode(_recovery_record(self._found)),
            )
        self.commit()

    @property
    def checkpoint(self) -> bytes:
        """The newest durable checkpoint as a signed note (C2SP format; empty before one)."""
        return self._committer.note

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
            self._release()

    def _release(self) -> None:
        """Stop committing and release what the store opened, recording nothing."""
        self._closed = True
        self._committer.stop()
        if self._owns_medium:
            self._medium.close()
        if self._owns_clock and isinstance(self._clock, PtpClock):
            self._clock.close()


def _recovery_record(found: Attached) -> dict[str, object]:
    """What recovery did, as the `log.recovered` entry says it: where appends resumed, the
    entries it adopted from past the last commit record, durable entries it found damaged, and
    the bytes it zeroed after the last intact entry."""
    record: dict[str, object] = {"resumed_after_seq": found.seq}
    if found.adopted is not None:
        record["adopted"] = list(found.adopted)
    if found.damaged is not None:
        damaged = found.damaged
        record["damaged"] = {
            "first_seq": damaged.first_seq, "last_seq": damaged.last_seq,
            "reason": damaged.reason,
        }  # fmt: skip
    abandoned = [*found.released, *([found.abandon] if found.abandon is not None else [])]
    if abandoned:
        record["abandoned"] = [
            {"group": a.group, "offset": a.offset, "bytes": a.length, "reason": a.reason}
            for a in abandoned
        ]
    return record


def checkpoint_path(store_path: str) -> Path:
    """The sidecar file holding the store's newest checkpoint note, outside the ring."""
    return Path(store_path + ".checkpoint")


class _SidecarFile:
    """Writes the newest checkpoint note beside the store: write, then rename over the old one.

    Not fsynced: it is written after the commit record it copies is durable, so a copy lost
    to a power cut is only older, never ahead of the store.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._scratch = path.with_name(path.name + ".tmp")

    def __call__(self, note: bytes) -> None:
        self._scratch.write_bytes(note)
        os.replace(self._scratch, self._path)


def verify_store(
    path: str | os.PathLike[str],
    *,
    allow_fallback_clock: bool = False,
    key: Verifier | None = None,
    checkpoint: ExternalCheckpoint | None = None,
) -> VerifyReport:
    """Verify a store file (a consistent snapshot of it, if a logger is writing it): every
    seal, link, sequence number, timestamp, commit record and the clock source; with `key`,
    the signatures; with `checkpoint`, that the store still holds what it names. A file that
    is empty, short, not a store or unreadable is an UNREADABLE verdict, never an exception."""

    def verify(view: StoreView) -> VerifyReport:
        return verify_view(
            view, allow_fallback_clock=allow_fallback_clock, key=key, checkpoint=checkpoint
        )

    try:
        # In place first; a copy only when a running logger reclaimed a group meanwhile.
        mapped = MappedStore(path)
        with mapped as view:
            report = verify(view)
            if mapped.unchanged():
                return report
        view = read_snapshot(path)
    except (StoreLayoutError, OSError) as exc:
        report = VerifyReport()
        report.add(FaultClass.UNREADABLE, os.fspath(path), str(exc))
        report.verdict = Verdict.UNREADABLE
        return report
    if view.reclaimed:
        view_notes = [
            f"groups {sorted(view.reclaimed)} were reclaimed by the running logger while the "
            "store was read; their entries count as evicted"
        ]
    else:
        view_notes = []
    report = verify(view)
    report.notes.extend(view_notes)
    return report


def read_entries(path: str | os.PathLike[str]) -> Iterator[Entry]:
    """Every entry verify accepts, oldest first, from a consistent snapshot of the store."""
    yield from iter_entries(read_snapshot(path))
