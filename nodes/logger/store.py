"""The logger's sealed store: a wear-levelled write-ahead ring of chained, digested entries.

Entries are stamped from the PTP hardware clock, sealed with CRC32C(payload), SHA-256(timestamp
|| payload) and a chain digest over the previous entry, and appended to page groups of an mmap'd
file. Group commit msyncs them within `commit_latency_ms`; after a crash the store is recovered
by scanning. `docs/log-store.md` documents the layout, the retention policy and verify.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, Literal, Protocol

import crc32c
import msgspec

from vigil.bus.closing import Closing
from vigil.bus.ptp import ClockConfig, ClockOffset, ClockSource, PtpClock
from vigil.errors import IntegrityError, VigilError
from vigil.nodes.logger._audit import AUDIT_EVENT, pack_audit
from vigil.nodes.logger._format import (
    ENTRY_HEADER,
    FLAG_BAD,
    GROUP_HEADER_BYTES,
    MAX_NAME_BYTES,
    Entry,
    EntryFault,
    EntryTooLarge,
    Geometry,
    GroupHeader,
    Meta,
    RecordRefused,
    StoreLayoutError,
    align8,
    decode_meta,
    encode_group_header,
    encode_meta,
    encode_superblock,
    genesis_chain,
    plan_geometry,
)
from vigil.nodes.logger._medium import Medium, MmapMedium
from vigil.nodes.logger._scan import (
    Fault,
    FaultClass,
    StoreView,
    VerifyReport,
    iter_entries,
    open_view,
    verify_image,
)
from vigil.nodes.logger._sealer import Names, Record, SealFn, seal, seal_python
from vigil.nodes.logger._wear import NoHealthyGroup, WearLeveller
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
_crc32c = crc32c.crc32c
# A commit request: byte range [lo, hi), last sequence number in it, when its oldest entry
# was appended, and its id.
_Request = tuple[int, int, int, int, int]


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the store lives, its geometry, its commit latency and its clock."""

    path: str
    size_bytes: int = 64 * 1024 * 1024
    # Opening a group waits for one msync: larger groups wait less often (docs/log-store.md).
    group_bytes: int = 4 * 1024 * 1024
    commit_latency_ms: float = 5.0
    ptp_device: str = "/dev/ptp0"
    fallback: tuple[Literal["TAI", "REALTIME"], ...] = ("TAI", "REALTIME")
    # "overwrite": the oldest group is reclaimed when no free group is left. "exported": it is
    # reclaimed only once `vigil log export --mark` has preserved it, else append raises
    # StoreFull.
    retention: Literal["overwrite", "exported"] = "overwrite"
    # msync from a committer thread (overlapping with sealing) or inline in `commit`.
    background_commit: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.commit_latency_ms <= 60_000:
            raise ValueError("commit_latency_ms must be in (0, 60000]")
        if self.size_bytes <= 0 or self.group_bytes <= 0:
            raise ValueError("size_bytes and group_bytes must be positive")


class StoreStats(msgspec.Struct, kw_only=True):
    """Counters of one open store (this session only, except the sequence numbers)."""

    entries: int = 0
    last_seq: int = 0
    committed_seq: int = 0
    oldest_seq: int = 0
    commits: int = 0
    last_commit_latency_ms: float = 0.0
    max_commit_latency_ms: float = 0.0
    bytes_appended: int = 0
    groups_opened: int = 0
    bad_groups: int = 0
    recovered: bool = False
    clock_source: str = ""
    # Which sealing loop serves: "compiled" (the C extension) or "python" (the reference).
    sealer: str = ""


class StoreClosed(VigilError):
    """The store was used after `close`."""


class StoreFull(VigilError):
    """Retention 'exported': the oldest group holds entries no export has preserved yet."""

    def __init__(self, oldest_seq: int, exported_seq: int) -> None:
        super().__init__(
            f"the oldest group (from seq {oldest_seq}) is not exported (exported up to "
            f"{exported_seq}); run `vigil log export --mark`"
        )
        self.oldest_seq = oldest_seq
        self.exported_seq = exported_seq


class StoreIOError(VigilError):
    """The medium refused a write or a sync; entries after `committed_seq` may be lost."""

    def __init__(self, committed_seq: int, cause: OSError) -> None:
        super().__init__(f"store I/O failed after seq {committed_seq}: {cause}")
        self.committed_seq = committed_seq
        self.cause = cause


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


def export_watermark_path(store_path: str) -> Path:
    """The file `vigil log export --mark` writes: the last sequence number it preserved."""
    return Path(store_path + ".exported")


def _read_watermark(store_path: str) -> int:
    try:
        text = export_watermark_path(store_path).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


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
        self._write = medium.write
        self._seal = sealer
        self._now: Callable[[], int] = clock.read if isinstance(clock, PtpClock) else clock.now_ns
        self._clock_byte = int(clock.source)
        self._names: Names = {}
        self.stats = StoreStats(
            clock_source=clock.source.name,
            sealer="python" if sealer is seal_python else "compiled",
        )
        self._closed = False
        self._latency_ns = int(config.commit_latency_ms * 1_000_000)
        self._trigger_ns = self._latency_ns
        self._first_dirty: int | None = None
        self._dirty_lo = 0
        self._cv = threading.Condition()
        self._pending: _Request | None = None
        # Commit requests are numbered; a waiter waits for its own (merged ones take the last).
        self._request_id = 0
        self._synced_id = 0
        self._busy = False
        self._stopping = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        # Set by _attach: geometry, metadata, leveller, write position.
        self._geo: Geometry
        self._scratch: memoryview
        self._meta: Meta
        self._slot = 0
        self._level: WearLeveller
        self._first_seqs: dict[int, int] = {}
        self._group = -1
        self._pos = 0
        self._group_end = 0
        self._seq = 0
        self._chain = b""

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
        image = self._medium.image
        page = mmap.PAGESIZE if isinstance(self._medium, MmapMedium) else 4096
        try:
            view = open_view(image, page)
        except StoreLayoutError:
            view = self._create(page)
        self._geo = view.geo
        # Where the sealing loop writes a burst before it is copied into the medium: one group.
        self._scratch = memoryview(bytearray(view.geo.group_bytes))
        self._store_id = view.store_id
        self._meta = view.meta.copy()
        self._slot = 1 if view.slots[1] is view.meta else 0
        groups = self._meta.groups
        self._level = WearLeveller(
            [int(w) for w in groups["wear"]],
            [int(e) for e in groups["epoch"]],
            [bool(f & FLAG_BAD) for f in groups["flags"]],
        )
        self.stats.bad_groups = sum(self._level.bad)
        for group in self._level.live:
            header = view.header(group)
            if header is not None:
                self._first_seqs[group] = header.first_seq
        if not self._resume_clean(view):
            self._recover(view)
        self._sync_level()
        self._meta.clean = False
        self._write_meta()
        self.stats.last_seq = self.stats.committed_seq = self._seq
        self._update_oldest()

    def _create(self, page: int) -> StoreView:
        geo = plan_geometry(self._medium.size, self._config.group_bytes, page)
        image = self._medium.image
        for slot in (0, 1):
            existing = decode_meta(
                image[geo.slot_offset(slot) : geo.slot_offset(slot) + geo.slot_bytes],
                geo.n_groups,
            )
            if existing is not None and existing.groups["epoch"].any():
                # A damaged superblock over live data: refuse rather than overwrite evidence.
                raise IntegrityError("log store superblock", "a valid superblock", "damage")
        if any(image[: geo.page]) and not any(
            decode_meta(image[o : o + geo.slot_bytes], geo.n_groups) is not None
            for o in (geo.slot_offset(0), geo.slot_offset(1))
        ):
            # A superblock page that is neither empty nor a creation cut short (whose metadata
            # slots, written first, are valid and hold no group): some other file.
            raise StoreLayoutError(f"{self._config.path} is not a vigil log store")
        store_id = os.urandom(16)
        meta = Meta.empty(geo.n_groups)
        meta.clean = True
        meta.last_chain = genesis_chain(store_id)
        # Both slots first, the superblock last: a crash in between leaves no superblock, and
        # the next open starts over, since nothing was stored yet.
        for slot in (0, 1):
            meta.generation = slot + 1
            self._medium.write(geo.slot_offset(slot), encode_meta(meta, geo.slot_bytes))
        self._medium.sync(geo.slot_offset(0), 2 * geo.slot_bytes)
        self._medium.write(0, encode_superblock(geo, store_id, time.time_ns()))
        self._medium.sync(0, geo.page)
        return open_view(self._medium.image, page)

    def _resume_clean(self, view: StoreView) -> bool:
        meta = view.meta
        live = self._level.live
        if not meta.clean:
            return False
        if not live:
            self._seq = meta.last_seq
            self._chain = meta.last_chain if meta.last_seq else genesis_chain(view.store_id)
            return True
        newest = live[-1]
        header = view.header(newest)
        if header is None or meta.tail is None or meta.tail[0] != newest:
            return False
        seq, chain, end = header.first_seq - 1, header.anchor, GROUP_HEADER_BYTES
        for item in view.walk_group(newest, header.first_seq, header.anchor, meta.tail[1]):
            if isinstance(item, EntryFault):
                return False
            seq, chain = item.seq, item.chain
        end = view.last_offset if seq >= header.first_seq else GROUP_HEADER_BYTES
        if seq != meta.last_seq or chain != meta.last_chain or end != meta.tail[1]:
            return False
        self._seq, self._chain = seq, chain
        self._group = newest
        start = self._geo.group_offset(newest)
        self._pos = self._dirty_lo = start + end
        self._group_end = start + self._geo.group_bytes
        return True

    def _recover(self, view: StoreView) -> None:
        # After a crash only the newest group can hold a torn tail; its header carries the
        # chain anchor, so nothing older needs reading. Appends resume in a fresh group, so the
        # torn bytes (and anything after them) are never overwritten by new entries.
        self.stats.recovered = True
        self._seq, self._chain = 0, genesis_chain(view.store_id)
        for group in reversed(self._level.live):
            header = view.header(group)
            if header is None:
                self._level.release(group)
                self._first_seqs.pop(group, None)
                continue
            self._seq, self._chain = header.first_seq - 1, header.anchor
            for item in view.walk_group(group, header.first_seq, header.anchor):
                if isinstance(item, EntryFault):
                    break
                self._seq, self._chain = item.seq, item.chain
            break
        self._group = -1
        self._pos = self._group_end = 0

    def _start(self) -> None:
        if self._config.background_commit:
            self._thread = threading.Thread(
                target=self._committer, name="vigil-log-commit", daemon=True
            )
            self._thread.start()
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
                payload=msgspec.msgpack.encode({"resumed_after_seq": self._seq - 1}),
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
        # Commit latency counts from the burst's first entry, not from when it was stored.
        began = self._mono()
        seal, names, now, clock = self._seal, self._names, self._now, self._clock_byte
        scratch = self._scratch
        index, count = 0, len(records)
        while True:
            # Sealed in place into the scratch buffer, at most the room left in the group.
            out = scratch[: self._group_end - self._pos]
            reached, used, seq, chain = seal(
                records, index, count, names, now, _crc32c, clock, self._seq, self._chain, out
            )
            self._store_burst(out[:used], seq=seq, chain=chain, count=reached - index, began=began)
            if reached == count:
                return seq
            # The loop stopped at a record: refuse it, or intern its names or open a group
            # for it, then seal it with the reference loop, where any other fault raises.
            if self._admit(records[reached], reached):
                began = self._mono()
            out = scratch[: self._group_end - self._pos]
            index, used, seq, chain = seal_python(
                records, reached, reached + 1, names, now, _crc32c, clock, self._seq,
                self._chain, out,
            )  # fmt: skip
            self._store_burst(out[:used], seq=seq, chain=chain, count=index - reached, began=began)

    def _admit(self, record: Record, index: int) -> bool:
        """Make the record at `index` sealable: names interned, trace id checked, room in the
        current group (opening the next one when it is full); True when a group was opened.
        RecordRefused (EntryTooLarge for one that fits no group) when it cannot be sealed."""
        node, event, payload, trace = record
        names = self._names.get((node, event)) or self._intern(node, event)
        if names is None:
            raise RecordRefused("node (non-empty) and event are limited to 255 UTF-8 bytes", index)
        if trace and len(trace) != 16:
            raise RecordRefused("trace_id is 16 bytes or empty", index)
        padded = align8(ENTRY_HEADER.size + len(names[2]) + len(payload))
        if self._pos + padded <= self._group_end:
            return False
        capacity = self._geo.group_bytes - GROUP_HEADER_BYTES
        if padded > capacity:
            raise EntryTooLarge(padded, capacity, index)
        # The group is full: roll (which commits what it holds).
        self._pos = self._roll()
        return True

    def _store_burst(
        self, data: memoryview, *, seq: int, chain: bytes, count: int, began: int
    ) -> None:
        """Copy sealed entries into the medium and advance the write position past them."""
        if not count:
            return
        start = self._pos
        try:
            self._write(start, data)
        except OSError as exc:
            raise StoreIOError(self.stats.committed_seq, exc) from exc
        stats = self.stats
        stats.entries += count
        stats.bytes_appended += len(data)
        stats.last_seq = self._seq = seq
        self._pos = start + len(data)
        self._chain = chain
        if self._first_dirty is None:
            self._first_dirty = began
        if self._mono() - self._first_dirty >= self._trigger_ns:
            self._request_commit()

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

    def _intern(self, node: str, event: str | int) -> tuple[int, int, bytes] | None:
        """The (node, event) names as the entry stores them, cached; None when they are not
        storable (an empty node, or a name over 255 UTF-8 bytes)."""
        node_b = node.encode()
        event_b = str(int(event)).encode() if isinstance(event, int) else event.encode()
        if not node_b or len(node_b) > MAX_NAME_BYTES or len(event_b) > MAX_NAME_BYTES:
            return None
        names = (len(node_b), len(event_b), node_b + event_b)
        if len(self._names) >= 4096:
            self._names.clear()  # bounded; the sealing loop finds only names cached here
        self._names[(node, event)] = names
        return names

    # -- groups ----------------------------------------------------------------------------

    def _roll(self) -> int:
        geo = self._geo
        while True:
            group, reclaim = self._level.peek()
            if reclaim and self._config.retention == "exported":
                self._check_exported(group)
            group, epoch = self._level.take()
            self._first_seqs.pop(group, None)
            self._sync_level()
            # The metadata that takes the group and everything in the group being left must be
            # durable before the new group's header can reach the disk, or a crash could keep
            # the new group and lose the old group's tail. Both go in one msync (one flush of
            # the disk): the range from the metadata slot to the tail holds nothing else dirty.
            self._commit(also=(self._write_meta(sync=False), geo.slot_bytes))
            start = geo.group_offset(group)
            header = encode_group_header(GroupHeader(epoch, self._seq + 1, self._chain))
            try:
                self._write(start, header)
            except OSError as exc:
                raise StoreIOError(self.stats.committed_seq, exc) from exc
            if bytes(self._medium.image[start : start + len(header)]) == header:
                break
            # The medium did not keep what was written: retire the group, try the next one.
            self._level.mark_bad(group)
            self.stats.bad_groups += 1
        self._first_seqs[group] = self._seq + 1
        self._group = group
        self._dirty_lo = start
        self._group_end = start + geo.group_bytes
        self.stats.groups_opened += 1
        self._update_oldest()
        return start + GROUP_HEADER_BYTES

    def _check_exported(self, group: int) -> None:
        live = self._level.live
        following = live[1] if len(live) > 1 else None
        last_in_group = (
            self._first_seqs.get(following, self._seq + 1) - 1
            if following is not None
            else self._seq
        )
        exported = _read_watermark(self._config.path)
        if exported < last_in_group:
            raise StoreFull(self._first_seqs.get(group, 0), exported)

    def _update_oldest(self) -> None:
        live = self._level.live
        self.stats.oldest_seq = self._first_seqs.get(live[0], 0) if live else 0

    def _sync_level(self) -> None:
        groups = self._meta.groups
        level = self._level
        groups["wear"] = level.wear
        groups["epoch"] = level.epochs
        groups["flags"] = [FLAG_BAD if bad else 0 for bad in level.bad]

    def _write_meta(self, *, sync: bool = True) -> int:
        """Write the metadata into the next slot; returns the slot's offset.

        Slots alternate, each durable before the next is written: a torn write can only spoil
        the slot being written, and the other still holds the previous state. Without `sync`
        the caller makes it durable (in its next commit) before anything depends on it.
        """
        self._slot ^= 1
        self._meta.generation += 1
        offset = self._geo.slot_offset(self._slot)
        try:
            self._write(offset, encode_meta(self._meta, self._geo.slot_bytes))
            if sync:
                self._medium.sync(offset, self._geo.slot_bytes)
        except OSError as exc:
            raise StoreIOError(self.stats.committed_seq, exc) from exc
        return offset

    # -- committing ------------------------------------------------------------------------

    def poll_timeout_ms(self) -> int | None:
        """Milliseconds until the next group commit is due; None when nothing is pending."""
        first = self._first_dirty
        if first is None:
            return None
        return max(0, math.ceil((first + self._trigger_ns - self._mono()) / 1_000_000))

    def commit(self) -> None:
        """Make every appended entry durable (msync) before returning."""
        self._commit()

    def _commit(self, also: tuple[int, int] | None = None) -> None:
        """Commit what is dirty, and the byte range `also` with it, and wait until durable."""
        if self._closed:
            raise StoreClosed("commit after close")
        wanted = self._request_commit(also)
        if self._thread is None:
            return
        with self._cv:
            while self._synced_id < wanted and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise StoreIOError(self.stats.committed_seq, self._error)

    def _request_commit(self, also: tuple[int, int] | None = None) -> int:
        """Hand the dirty range (widened by `also`) to msync; returns the id to wait for.

        With nothing to commit, that is the id of the last request, which may still be in
        flight: waiting for it waits for everything appended before.
        """
        lo, hi = self._dirty_lo, self._pos
        if also is not None:
            lo, hi = min(lo, also[0]), max(hi, also[0] + also[1])
        if hi <= lo:
            self._first_dirty = None
            return self._request_id
        first = self._first_dirty if self._first_dirty is not None else self._mono()
        self._request_id += 1
        request = (lo, hi, self._seq, first, self._request_id)
        self._dirty_lo = self._pos
        self._first_dirty = None
        if self._thread is None:
            try:
                self._sync(request)
            except OSError as exc:
                raise StoreIOError(self.stats.committed_seq, exc) from exc
            return self._request_id
        with self._cv:
            if self._error is not None:
                raise StoreIOError(self.stats.committed_seq, self._error)
            pending = self._pending
            if pending is not None:
                request = (
                    min(pending[0], request[0]), max(pending[1], request[1]), request[2],
                    min(pending[3], request[3]), request[4],
                )  # fmt: skip
            self._pending = request
            self._cv.notify_all()
        return self._request_id

    def _sync(self, request: _Request) -> None:
        lo, hi, seq, first, request_id = request
        began = self._mono()
        self._medium.sync(lo, hi - lo)
        done = self._mono()
        stats = self.stats
        with self._cv:
            stats.committed_seq = max(stats.committed_seq, seq)
            self._synced_id = max(self._synced_id, request_id)
            stats.commits += 1
            latency = (done - first) / 1e6
            stats.last_commit_latency_ms = latency
            stats.max_commit_latency_ms = max(stats.max_commit_latency_ms, latency)
            # Start the next commit early by the time this msync took, so that append-to-durable
            # stays within the configured latency.
            self._trigger_ns = max(self._latency_ns // 4, self._latency_ns - (done - began))
            self._cv.notify_all()

    def _committer(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopping:
                    self._cv.wait()
                request = self._pending
                if request is None:
                    return
                self._pending = None
            try:
                self._sync(request)
            except OSError as exc:
                with self._cv:
                    self._error = exc
                    self._cv.notify_all()
                return

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
            self._meta.clean = True
            self._meta.last_seq = self._seq
            self._meta.last_chain = self._chain
            self._meta.tail = (
                (self._group, self._pos - self._geo.group_offset(self._group))
                if self._group >= 0
                else None
            )
            self._write_meta()
            self._write_meta()
        finally:
            self._closed = True
            self._stop_committer()
            if self._owns_medium:
                self._medium.close()
            if self._owns_clock and isinstance(self._clock, PtpClock):
                self._clock.close()

    def _stop_committer(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        thread.join()


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
