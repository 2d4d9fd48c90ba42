"""The append path: seal records into the current page group, roll to the next, commit.

`GroupWriter` owns the write position (group, offset, sequence number, chain value), the
metadata it keeps in step with the groups it takes, and the dirty byte range it hands to the
`Committer`. One thread appends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import crc32c

from vigil.nodes.logger._commit import Committer
from vigil.nodes.logger._config import StoreConfig, StoreStats
from vigil.nodes.logger._errors import StoreFull, StoreIOError
from vigil.nodes.logger._format import (
    ENTRY_HEADER,
    FLAG_BAD,
    GROUP_HEADER_BYTES,
    MAX_NAME_BYTES,
    NO_TAIL,
    EntryTooLarge,
    GroupHeader,
    RecordRefused,
    align8,
    encode_group_header,
    encode_meta,
)
from vigil.nodes.logger._medium import Medium
from vigil.nodes.logger._recovery import Attached
from vigil.nodes.logger._sealer import Names, Record, SealFn, seal_python

__all__ = ["GroupWriter", "export_watermark_path"]

_crc32c = crc32c.crc32c


def export_watermark_path(store_path: str) -> Path:
    """The file `vigil log export --mark` writes: the last sequence number it preserved."""
    return Path(store_path + ".exported")


def _read_watermark(store_path: str) -> int:
    try:
        text = export_watermark_path(store_path).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


class GroupWriter:
    """Seals bursts into page groups of the medium and keeps the metadata that names them."""

    def __init__(
        self,
        config: StoreConfig,
        medium: Medium,
        found: Attached,
        committer: Committer,
        stats: StoreStats,
        *,
        now: Callable[[], int],
        clock_byte: int,
        monotonic_ns: Callable[[], int],
        sealer: SealFn,
    ) -> None:
        self._config = config
        self._medium = medium
        self._write = medium.write
        self._committer = committer
        self.stats = stats
        self._now = now
        self._clock_byte = clock_byte
        self._mono = monotonic_ns
        self._seal = sealer
        self._names: Names = {}
        self._geo = found.geo
        # Where the sealing loop writes a burst before it is copied into the medium: one group.
        self._scratch = memoryview(bytearray(found.geo.group_bytes))
        self._meta = found.meta
        self._slot = found.slot
        self._level = found.level
        self._first_seqs = found.first_seqs
        self._group = found.group
        self._pos = self._dirty_lo = found.pos
        self._group_end = found.group_end
        self.seq = found.seq
        self.chain = found.chain
        self._first_dirty: int | None = None
        # What the last commit record requested named: (seq, start).
        self._recorded = (found.commit.last_seq, found.commit.start) if found.commit else (-1, 0)
        stats.bad_groups = sum(self._level.bad)

    def begin(self, found: Attached) -> None:
        """Record in the metadata that the store is open (not cleanly closed); then make what
        recovery adopted durable and zero what it abandoned, and name the point appends resume
        from in a commit record, before anything is appended after it."""
        # Groups recovery released are zeroed before the metadata frees them. Then the
        # metadata: the groups it names (the newest one's header may so far exist only in the
        # page cache of a killed writer) must be durable before their content is.
        for released in found.released:
            start = self._geo.group_offset(released.group)
            try:
                self._write(start, bytes(released.length))
                self._medium.sync(start, released.length)
            except OSError as exc:
                raise StoreIOError(self.stats.committed_seq, exc) from exc
        self._sync_level()
        self._meta.clean = False
        self._write_meta()
        self.stats.last_seq = self.seq
        self._update_oldest()
        lo, hi = found.resync if found.resync is not None else (self._pos, self._pos)
        if found.abandon is not None:
            start = self._geo.group_offset(found.abandon.group) + found.abandon.offset
            try:
                self._write(start, bytes(found.abandon.length))
            except OSError as exc:
                raise StoreIOError(self.stats.committed_seq, exc) from exc
            hi = start + found.abandon.length
        self.commit(also=(lo, hi - lo) if hi > lo else None)

    # -- appending -------------------------------------------------------------------------

    def append_many(self, records: Sequence[Record]) -> int:
        """Seal and store a burst in order; returns the last sequence number."""
        # Commit latency counts from the burst's first entry, not from when it was stored.
        began = self._mono()
        seal, names, now, clock = self._seal, self._names, self._now, self._clock_byte
        scratch = self._scratch
        index, count = 0, len(records)
        while True:
            # Sealed in place into the scratch buffer, at most the room left in the group.
            out = scratch[: self._group_end - self._pos]
            reached, used, seq, chain = seal(
                records, index, count, names, now, _crc32c, clock, self.seq, self.chain, out
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
                records, reached, reached + 1, names, now, _crc32c, clock, self.seq,
                self.chain, out,
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
        stats.last_seq = self.seq = seq
        self._pos = start + len(data)
        self.chain = chain
        if self._first_dirty is None:
            self._first_dirty = began
        if self._mono() - self._first_dirty >= self._committer.trigger_ns:
            self.request_commit()

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
            # When the oldest group is reclaimed, a commit record saying where history will
            # start is durable first, so that wrap is told from deletion. Then the metadata
            # that takes the group and the rest of the group being left, in one msync: until
            # the header is written either may reach the disk without the other (a taken group
            # without a header holds nothing; the group left then still ends the store). Only
            # then the header, so that it never reaches the disk before either.
            # That msync runs here rather than on the committer thread: it need not wait for a
            # commit record in flight (the next commit records these entries).
            if reclaim:
                live = self._level.live
                self.commit(start=self._first_seqs.get(live[1], self.seq + 1))
            group, epoch = self._level.take()
            self._first_seqs.pop(group, None)
            self._sync_level()
            meta_at = self._write_meta(sync=False)
            self._sync_now(min(self._dirty_lo, meta_at), max(self._pos, meta_at + geo.slot_bytes))
            start = geo.group_offset(group)
            header = encode_group_header(GroupHeader(epoch, self.seq + 1, self.chain))
            try:
                self._write(start, header)
            except OSError as exc:
                raise StoreIOError(self.stats.committed_seq, exc) from exc
            if bytes(self._medium.image[start : start + len(header)]) == header:
                break
            # The medium did not keep what was written: retire the group, try the next one.
            self._level.mark_bad(group)
            self.stats.bad_groups += 1
        self._first_seqs[group] = self.seq + 1
        self._group = group
        self._dirty_lo = start
        self._group_end = start + geo.group_bytes
        self.stats.groups_opened += 1
        self._update_oldest()
        return start + GROUP_HEADER_BYTES

    def _sync_now(self, lo: int, hi: int) -> None:
        """msync `[lo, hi)` on this thread; what was dirty up to the write position is then
        durable (the next commit only records it)."""
        try:
            self._medium.sync(lo, hi - lo)
        except OSError as exc:
            raise StoreIOError(self.stats.committed_seq, exc) from exc
        self._dirty_lo = self._pos

    def _check_exported(self, group: int) -> None:
        live = self._level.live
        following = live[1] if len(live) > 1 else None
        last_in_group = (
            self._first_seqs.get(following, self.seq + 1) - 1 if following is not None else self.seq
        )
        exported = _read_watermark(self._config.path)
        if exported < last_in_group:
            raise StoreFull(self._first_seqs.get(group, 0), exported)

    def _update_oldest(self) -> None:
        live = self._level.live
        self.stats.oldest_seq = self._first_seqs.get(live[0], 0) if live else 0

    def _start_seq(self) -> int:
        """The first sequence number retained (the next one when nothing is)."""
        live = self._level.live
        return self._first_seqs.get(live[0], self.seq + 1) if live else self.seq + 1

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
        return max(0, math.ceil((first + self._committer.trigger_ns - self._mono()) / 1_000_000))

    def commit(
        self, also: tuple[int, int] | None = None, *, record: bool = True, start: int | None = None
    ) -> None:
        """Commit what is dirty, and the byte range `also` with it, and wait until durable;
        with `record`, then a commit record naming the last entry (and history's `start`)."""
        self._committer.wait(self.request_commit(also, record=record, start=start))

    def request_commit(
        self, also: tuple[int, int] | None = None, *, record: bool = True, start: int | None = None
    ) -> int:
        """Hand the dirty range (widened by `also`) to msync, followed with `record` by a
        commit record; returns the id to wait for.

        With nothing to commit and nothing new to record, that is the id of the last request,
        which may still be in flight: waiting for it waits for everything appended before.
        """
        lo, hi = self._dirty_lo, self._pos
        if also is not None:
            lo, hi = (also[0], also[0] + also[1]) if hi <= lo else (
                min(lo, also[0]), max(hi, also[0] + also[1])
            )  # fmt: skip
        start = self._start_seq() if start is None else start
        record = record and self._recorded != (self.seq, start)
        if hi <= lo and not record:
            self._first_dirty = None
            return self._committer.last_id
        first = self._first_dirty if self._first_dirty is not None else self._mono()
        self._dirty_lo = self._pos
        self._first_dirty = None
        if record:
            self._recorded = (self.seq, start)
        group = self._group
        tail = (group, self._pos - self._geo.group_offset(group)) if group >= 0 else (NO_TAIL, 0)
        return self._committer.submit(
            lo, hi, seq=self.seq, chain=self.chain, tail=tail, start=start, first=first,
            record=record,
        )  # fmt: skip

    # -- closing ---------------------------------------------------------------------------

    def record_clean_close(self) -> None:
        """Write the clean-close state (last seq, chain and tail) into both metadata slots."""
        self._meta.clean = True
        self._meta.last_seq = self.seq
        self._meta.last_chain = self.chain
        self._meta.tail = (
            (self._group, self._pos - self._geo.group_offset(self._group))
            if self._group >= 0
            else None
        )
        self._write_meta()
        self._write_meta()
